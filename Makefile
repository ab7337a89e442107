# vmwatch — see README.md. `make demo` and `make test` are the two set-up
# commands on a fresh Debian 12 machine (as root).
GO       ?= go
BIN      := bin
DEMO_DIR ?= /run/vmwatch/demo
FUZZTIME ?= 300000x
# FUZZTIME given on the command line (or in the environment) applies to
# every target, those with their own fuzztime too
FUZZTIME_SET := $(filter command line environment,$(origin FUZZTIME))

# fuzz targets: package:FuzzName[:fuzztime]. FuzzViews runs every view of
# a kernel over one input (many times slower per input than a single
# parser), so it gets fewer inputs to stay within CI's time
FUZZ := ./guestmem:FuzzParseDump ./linux:FuzzParseKallsyms ./linux:FuzzFindBTF ./linux:FuzzBTFScan ./x86:FuzzTranslate ./guestmem:FuzzParseMtree ./linux:FuzzRingText ./detect:FuzzDiffRegion ./backup:FuzzParsePoint ./linux:FuzzViews:100000x ./linux:FuzzBashHeap ./linux:FuzzELFIdentity

.PHONY: all build deps test unit fuzz bench demo demo-stop clean

all: build

# vmwatch is built with YARA (cgo and Debian's libyara-dev, installed by
# `make deps`); `go build ./cmd/vmwatch` alone builds it without.
build:
	$(GO) build -tags yara -o $(BIN)/vmwatch ./cmd/vmwatch
	$(GO) build -o $(BIN)/vmwatch-guest ./cmd/vmwatch-guest

# packages, then the test kernels and the Debian system guest image, built
# once and cached (testvm.CacheDir: /var/cache/vmwatch for root)
deps:
	./scripts/install-deps.sh
	$(GO) run ./cmd/vmwatch-guest image

# everything: vet, unit and end-to-end tests (real guests), short fuzz runs
test: deps
	$(GO) vet ./...
	$(GO) vet -tags yara ./detect
	$(GO) test -count=1 -timeout 40m ./...
	$(GO) test -count=1 -tags yara ./detect
	$(MAKE) --no-print-directory fuzz

# every package but ./e2e (the one that boots guests), so that a new package
# is not left out; the YARA tests need the yara tag
UNIT_PKGS = $(shell $(GO) list ./... | grep -v '/e2e$$')

unit:
	$(GO) test -count=1 -short $(UNIT_PKGS)
	$(GO) test -count=1 -short -tags yara ./detect

fuzz:
	@for t in $(FUZZ); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; ft=$(FUZZTIME); \
		case $$rest in *:*) [ -n "$(FUZZTIME_SET)" ] || ft=$${rest#*:};; esac; \
		echo "fuzz $$name ($$pkg): $$ft"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $$ft -fuzzminimizetime 100x $$pkg || exit 1; \
	done

bench: deps
	$(GO) test -tags yara -run '^$$' -bench . -benchtime 20x -timeout 30m ./e2e

demo: deps
	$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory demo-stop >/dev/null 2>&1 || true
	$(BIN)/vmwatch-guest start --kernel 6.1 --name demo --dir $(DEMO_DIR)
	$(BIN)/vmwatch-guest start --kernel 6.12 --name demo2 --dir $(DEMO_DIR)2
	$(BIN)/vmwatch-guest start --libvirt --disk 256 --kernel 6.12 --name demo-lv --dir $(DEMO_DIR)-lv
	$(BIN)/vmwatch info -t qmp:$(DEMO_DIR)/qmp.sock
	$(BIN)/vmwatch ps -t qmp:$(DEMO_DIR)/qmp.sock
	@rm -rf $(DEMO_DIR)-backups
	$(BIN)/vmwatch-guest run --dir $(DEMO_DIR)-lv 'dd if=/dev/urandom of=/dev/vda bs=1M count=32 conv=fsync 2>/dev/null'
	$(BIN)/vmwatch backup -t libvirt:demo-lv --repo $(DEMO_DIR)-backups
	$(BIN)/vmwatch-guest run --dir $(DEMO_DIR)-lv 'dd if=/dev/urandom of=/dev/vda bs=64k count=16 seek=2000 conv=fsync 2>/dev/null'
	$(BIN)/vmwatch backup -t libvirt:demo-lv --repo $(DEMO_DIR)-backups
	$(BIN)/vmwatch backups --repo $(DEMO_DIR)-backups
	@mkdir -p $(DEMO_DIR)-serve
	@nohup $(BIN)/vmwatch serve --qmp demo=$(DEMO_DIR)/qmp.sock --qmp demo2=$(DEMO_DIR)2/qmp.sock \
		--state-dir $(DEMO_DIR)-serve --listen 127.0.0.1:8080 --log-level info \
		> $(DEMO_DIR)-serve/serve.log 2>&1 & echo $$! > $(DEMO_DIR)-serve/serve.pid
	@sleep 2; grep -m1 dashboard $(DEMO_DIR)-serve/serve.log || (cat $(DEMO_DIR)-serve/serve.log; exit 1)
	@echo
	@echo "The guests and vmwatch serve keep running: open http://127.0.0.1:8080/"
	@echo "serve holds the QMP sockets (QEMU serves one client); the command line can still read the guests by pid:"
	@echo "  $(BIN)/vmwatch check -t pid:$$(cat $(DEMO_DIR)/qemu.pid)"
	@echo "The libvirt domain demo-lv (watched by serve too) has restore points in $(DEMO_DIR)-backups:"
	@echo "  $(BIN)/vmwatch restore --repo $(DEMO_DIR)-backups --point ID --to /tmp/vda.qcow2"
	@echo "Stop everything with: make demo-stop"

demo-stop:
	-@test -f $(DEMO_DIR)-serve/serve.pid && kill $$(cat $(DEMO_DIR)-serve/serve.pid) 2>/dev/null; rm -f $(DEMO_DIR)-serve/serve.pid
	-$(BIN)/vmwatch-guest stop --dir $(DEMO_DIR)
	-$(BIN)/vmwatch-guest stop --dir $(DEMO_DIR)2
	-$(BIN)/vmwatch-guest stop --dir $(DEMO_DIR)-lv

clean:
	rm -rf $(BIN)
