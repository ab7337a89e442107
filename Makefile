# vmwatch — see README.md. `make demo` and `make test` are the two set-up
# commands on a fresh Debian 12 machine (as root).
GO       ?= go
BIN      := bin
DEMO_DIR ?= /run/vmwatch/demo
FUZZTIME ?= 10s

# fuzz targets: package:FuzzName
FUZZ := ./guestmem:FuzzParseDump ./linux:FuzzParseKallsyms ./linux:FuzzFindBTF ./x86:FuzzTranslate ./guestmem:FuzzParseMtree ./linux:FuzzRingText ./detect:FuzzDiffRegion

.PHONY: all build deps test unit fuzz bench demo demo-stop clean

all: build

# vmwatch is built with YARA (cgo and Debian's libyara-dev, installed by
# `make deps`); `go build ./cmd/vmwatch` alone builds it without.
build:
	$(GO) build -tags yara -o $(BIN)/vmwatch ./cmd/vmwatch
	$(GO) build -o $(BIN)/vmwatch-guest ./cmd/vmwatch-guest

deps:
	./scripts/install-deps.sh

# everything: vet, unit and end-to-end tests (real guests), short fuzz runs
test: deps
	$(GO) vet ./...
	$(GO) vet -tags yara ./detect
	$(GO) test -count=1 -timeout 40m ./...
	$(MAKE) --no-print-directory fuzz

unit:
	$(GO) test -count=1 -short ./guestmem ./x86 ./linux ./hv/... ./target ./cmd/...

fuzz:
	@for t in $(FUZZ); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$pkg || exit 1; \
	done

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 20x -timeout 30m ./e2e

demo: deps
	$(MAKE) --no-print-directory build
	@$(BIN)/vmwatch-guest stop --dir $(DEMO_DIR) 2>/dev/null || true
	$(BIN)/vmwatch-guest start --kernel 6.1 --dir $(DEMO_DIR)
	$(BIN)/vmwatch info -t qmp:$(DEMO_DIR)/qmp.sock
	$(BIN)/vmwatch ps -t qmp:$(DEMO_DIR)/qmp.sock
	@echo
	@echo "The guest keeps running. Try: $(BIN)/vmwatch sockets -t qmp:$(DEMO_DIR)/qmp.sock"
	@echo "Stop it with: make demo-stop   (or $(BIN)/vmwatch-guest stop --dir $(DEMO_DIR))"

demo-stop:
	$(BIN)/vmwatch-guest stop --dir $(DEMO_DIR)

clean:
	rm -rf $(BIN)
