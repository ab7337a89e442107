package detect

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/vmwatch/vmwatch/linux"
)

// ProcDetail is what the process detectors read of a user process beyond ps.
type ProcDetail struct {
	Exe    linux.FileInfo
	ExeErr error
	Env    []string
	VMAs   []linux.VMA
	VMAErr error
	// Stdio are the sockets open as file descriptors 0, 1 and 2.
	Stdio map[int]*linux.Socket
}

// Detail reads (once) the details of a user process.
func (s *Snapshot) Detail(p linux.Process) *ProcDetail {
	s.detailMu.Lock()
	defer s.detailMu.Unlock()
	if d, ok := s.details[p.Task]; ok {
		return d
	}
	d := &ProcDetail{Stdio: map[int]*linux.Socket{}}
	s.details[p.Task] = d
	if p.Mm == 0 {
		return d
	}
	d.Exe, d.ExeErr = s.K.Exe(uint64(p.Mm))
	d.Env, _ = s.K.Environ(uint64(p.Mm))
	d.VMAs, d.VMAErr = s.K.VMAs(uint64(p.Mm), false)
	if task, err := s.K.Object("task_struct", uint64(p.Task)); err == nil {
		if files, err := s.K.Files(task); err == nil {
			for _, f := range files {
				if f.FD > 2 {
					break
				}
				if sock, ok := s.K.SocketOfFile(f.File); ok {
					d.Stdio[f.FD] = sock
				}
			}
		}
	}
	return d
}

func userProcesses(s *Snapshot) ([]linux.Process, map[linux.Addr]linux.Process, error) {
	ps, err := s.Processes()
	byTask := map[linux.Addr]linux.Process{}
	var user []linux.Process
	for _, p := range ps {
		byTask[p.Task] = p
		if !p.Kernel && p.Mm != 0 && p.State != "Z" {
			user = append(user, p)
		}
	}
	return user, byTask, err
}

func credentials(s *Snapshot) ([]Finding, error) {
	user, byTask, err := userProcesses(s)
	var out []Finding
	// Separate processes never share a struct cred: fork gives the child
	// its own copy (copy_creds); only threads of one process share.
	byCred := map[linux.Addr][]linux.Process{}
	for _, p := range user {
		byCred[p.Cred] = append(byCred[p.Cred], p)
	}
	initCred, _ := s.K.Syms.Lookup("init_cred")
	for cred, ps := range byCred {
		if cred == 0 {
			continue
		}
		if uint64(cred) == initCred {
			for _, p := range ps {
				out = append(out, s.finding("kernel-credentials", fmt.Sprintf("Process %d (%s) runs with the kernel's own credentials", p.PID, p.Comm), Critical, "T1068",
					fmt.Sprintf("%d", p.PID),
					fmt.Sprintf("User process %d (%s) uses init_cred, the credentials of kernel threads; no user process gets them legitimately. A kernel exploit or rootkit gave it full privileges.", p.PID, p.Comm),
					Evidence{PIDs: []int64{p.PID}, Processes: []string{procLabel(p)}, Addresses: []AddrEvidence{s.addr("cred", uint64(cred))}, Expected: "credentials of its own", Found: "init_cred"}))
			}
			continue
		}
		if len(ps) < 2 {
			continue
		}
		var pids []int64
		var labels []string
		for _, p := range ps {
			pids = append(pids, p.PID)
			labels = append(labels, procLabel(p))
		}
		out = append(out, s.finding("shared-credentials", fmt.Sprintf("Processes %s share one set of credentials", joinInts(pids)), High, "T1134",
			fmt.Sprintf("%#x", uint64(cred)),
			fmt.Sprintf("Processes %s point at the same struct cred (uid %d). The kernel gives every process its own copy; a shared one means a process's credentials pointer was overwritten to borrow another's identity (privilege escalation by a kernel exploit or rootkit).", strings.Join(labels, ", "), ps[0].UID),
			Evidence{PIDs: pids, Processes: labels, Addresses: []AddrEvidence{{Role: "cred", Address: cred}}, Expected: "one struct cred per process", Found: fmt.Sprintf("%d processes on one struct cred", len(ps))}))
	}
	// A process that is root although its parent is not, and its program
	// is not set-user-ID root: nothing legitimate makes that happen.
	for _, p := range user {
		if p.EUID != 0 && p.UID != 0 {
			continue
		}
		parent, ok := byTask[p.Parent]
		if !ok || parent.EUID == 0 || parent.UID == 0 || parent.Kernel {
			continue
		}
		d := s.Detail(p)
		if d.ExeErr == nil && d.Exe.Setuid() && d.Exe.UID == 0 {
			continue
		}
		out = append(out, s.finding("privilege-escalation", fmt.Sprintf("Process %d (%s) became root without a set-user-ID program", p.PID, p.Comm), Critical, "T1068",
			fmt.Sprintf("%d", p.PID),
			fmt.Sprintf("Process %d (%s) runs as uid %d/euid %d, but its parent %d (%s) runs as uid %d and its program %s is not set-user-ID root. Its credentials were changed from inside the kernel.", p.PID, p.Comm, p.UID, p.EUID, parent.PID, parent.Comm, parent.UID, orUnknown(d.Exe.Path)),
			Evidence{PIDs: []int64{p.PID, parent.PID}, Processes: []string{procLabel(p), procLabel(parent)}, Addresses: []AddrEvidence{{Role: "cred", Address: p.Cred}},
				Expected: fmt.Sprintf("uid %d like its parent", parent.UID), Found: fmt.Sprintf("uid %d euid %d", p.UID, p.EUID)}))
	}
	return out, err
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

func joinInts(xs []int64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

// kernel thread names that user processes imitate
var kthreadPrefixes = []string{"kworker/", "ksoftirqd/", "migration/", "rcu_", "kthreadd", "watchdog/", "cpuhp/", "irq/", "kswapd", "kcompactd", "khugepaged", "kauditd", "khungtaskd", "oom_reaper", "jbd2/", "kblockd", "writeback", "scsi_", "kdevtmpfs", "ksmd", "idle_inject/", "mm_percpu_wq", "netns", "ipv6_addrconf", "kthrotld", "kintegrityd"}

func looksLikeKthread(comm string) bool {
	if strings.HasPrefix(comm, "[") && strings.HasSuffix(comm, "]") {
		return true
	}
	for _, p := range kthreadPrefixes {
		if strings.HasPrefix(comm, p) {
			return true
		}
	}
	return false
}

var shells = map[string]bool{"sh": true, "bash": true, "dash": true, "ash": true, "zsh": true, "ksh": true, "csh": true, "tcsh": true, "fish": true, "busybox": true, "python": true, "python3": true, "perl": true}

func processAnomalies(s *Snapshot) ([]Finding, error) {
	user, _, err := userProcesses(s)
	var out []Finding
	var vmaErrs []error
	for _, p := range user {
		key := fmt.Sprintf("%d", p.PID)
		ev := func() Evidence { return Evidence{PIDs: []int64{p.PID}, Processes: []string{procLabel(p)}} }
		if looksLikeKthread(p.Comm) {
			e := ev()
			e.Expected, e.Found = "a kernel thread (no user address space)", "a user process with memory at "+p.Mm.String()
			out = append(out, s.finding("kthread-masquerade", fmt.Sprintf("Process %d is a user process named like a kernel thread (%s)", p.PID, p.Comm), High, "T1036.004", key,
				fmt.Sprintf("Process %d calls itself %q, a kernel thread's name, but it has a user address space and runs %s. Malware hides in ps output this way.", p.PID, p.Comm, strings.Join(p.Cmdline, " ")), e))
		}
		d := s.Detail(p)
		if d.ExeErr == nil {
			switch {
			case strings.HasPrefix(d.Exe.Path, "/memfd:"):
				e := ev()
				e.Found = d.Exe.Path
				out = append(out, s.finding("fileless-executable", fmt.Sprintf("Process %d (%s) runs from memory (%s)", p.PID, p.Comm, d.Exe.Path), High, "T1620", key,
					fmt.Sprintf("Process %d runs a program loaded from a memfd (%s), never written to disk: fileless malware runs this way to leave no file to scan.", p.PID, d.Exe.Path), e))
			case d.Exe.Deleted:
				e := ev()
				e.Found = d.Exe.Path + " (deleted)"
				out = append(out, s.finding("deleted-executable", fmt.Sprintf("Process %d (%s) runs a deleted program", p.PID, p.Comm), High, "T1070.004", key,
					fmt.Sprintf("The program of process %d (%s) was deleted after it started. Attackers delete their tools to hide them; package upgrades also do this, so check the path.", p.PID, d.Exe.Path), e))
			}
		}
		if d.VMAErr != nil && len(vmaErrs) < 8 {
			vmaErrs = append(vmaErrs, fmt.Errorf("memory maps of process %d (%s): %w", p.PID, p.Comm, d.VMAErr))
		}
		var anon []linux.VMA
		for _, v := range d.VMAs {
			if v.Flags&linux.VMExec != 0 && v.FileAddr == 0 && !v.Special {
				anon = append(anon, v)
			}
		}
		if len(anon) > 0 {
			if rt, proof := jitRuntime(s.K, d); rt != "" {
				// a JIT compiler's code: one low finding that names the runtime
				e := ev()
				e.Addresses = []AddrEvidence{{Role: "mapping", Address: anon[0].Start}}
				e.Found = fmt.Sprintf("%d anonymous executable mapping(s), %s", len(anon), proof)
				e.Details = map[string]any{"runtime": rt, "mappings": len(anon)}
				out = append(out, s.finding("anonymous-executable-memory", fmt.Sprintf("Process %d (%s) runs JIT-compiled code (%s)", p.PID, p.Comm, rt), Low, "T1055", fmt.Sprintf("%d/jit", p.PID),
					fmt.Sprintf("Process %d (%s) has %d executable mapping(s) without a file; it runs %s (%s), whose JIT compiler puts generated code there. Expected for this runtime; code injected into it would look the same, so look closer if the runtime should not be here.", p.PID, p.Comm, len(anon), rt, proof), e))
			} else {
				for _, v := range anon {
					what := "executable memory that no file backs"
					if v.Flags&linux.VMWrite != 0 {
						what = "writable and executable memory that no file backs"
					}
					e := ev()
					e.Addresses = []AddrEvidence{{Role: "mapping", Address: v.Start}}
					e.Found = fmt.Sprintf("%v-%v %s anonymous", v.Start, v.End, v.Perms())
					out = append(out, s.finding("anonymous-executable-memory", fmt.Sprintf("Process %d (%s) has %s", p.PID, p.Comm, what), High, "T1055", fmt.Sprintf("%d/%#x", p.PID, uint64(v.Start)),
						fmt.Sprintf("Process %d (%s) maps %v-%v %s without a file, and it is not a known JIT runtime (Node.js, Java, .NET, browsers, ...): code injected into the process, or a loader that runs code from memory. Dump the mapping and look at it.", p.PID, p.Comm, v.Start, v.End, v.Perms()), e))
				}
			}
		}
		if shells[p.Comm] {
			for fd := 0; fd <= 2; fd++ {
				sock, ok := d.Stdio[fd]
				if !ok || sock.Protocol != "tcp" && sock.Protocol != "udp" || sock.RemotePort == 0 {
					continue
				}
				e := ev()
				e.Found = fmt.Sprintf("fd %d is %s %s:%d -> %s:%d", fd, sock.Protocol, sock.LocalAddr, sock.LocalPort, sock.RemoteAddr, sock.RemotePort)
				e.Details = map[string]any{"remote_address": sock.RemoteAddr, "remote_port": sock.RemotePort}
				out = append(out, s.finding("reverse-shell", fmt.Sprintf("Shell %d (%s) talks to %s:%d over its standard input/output", p.PID, p.Comm, sock.RemoteAddr, sock.RemotePort), High, "T1059.004", key,
					fmt.Sprintf("Shell process %d reads commands from a network connection to %s:%d (file descriptor %d is a socket): a reverse shell. Cut the VM's network and find how it started.", p.PID, sock.RemoteAddr, sock.RemotePort, fd), e))
				break
			}
		}
		for _, kv := range d.Env {
			if v, ok := strings.CutPrefix(kv, "LD_PRELOAD="); ok && v != "" {
				e := ev()
				e.Found = kv
				out = append(out, s.finding("ld-preload", fmt.Sprintf("Process %d (%s) runs with LD_PRELOAD=%s", p.PID, p.Comm, v), Medium, "T1574.006", key,
					fmt.Sprintf("Process %d preloads %s into every program it starts; userland rootkits hide files and processes this way. Check the library.", p.PID, v), e))
				break
			}
		}
	}
	return out, errors.Join(append([]error{err}, vmaErrs...)...)
}

// jitRuntimes are the programs whose JIT compilers put generated code in
// anonymous executable memory, known by their executable or a library
// they map (base names, a version may follow).
var jitRuntimes = []struct {
	name      string
	exe, libs []string
}{
	{"Node.js (V8)", []string{"node", "nodejs"}, []string{"libnode.so"}},
	{"Java (HotSpot)", nil, []string{"libjvm.so"}},
	{".NET (CoreCLR)", nil, []string{"libcoreclr.so"}},
	{"Mono", nil, []string{"libmonosgen-2.0.so", "libmono-2.0.so"}},
	{"Chromium (V8)", []string{"chromium", "chrome", "electron"}, []string{"libv8.so"}},
	{"Firefox (SpiderMonkey)", nil, []string{"libxul.so", "libmozjs"}},
	{"LuaJIT", []string{"luajit"}, []string{"libluajit-5.1.so"}},
	{"PyPy", []string{"pypy", "pypy3"}, []string{"libpypy-c.so", "libpypy3-c.so", "libpypy3.9-c.so"}},
	{"Erlang (BEAM JIT)", []string{"beam.smp"}, nil},
	{"PHP (opcache JIT)", nil, []string{"opcache.so"}},
	{"Julia", nil, []string{"libjulia.so", "libjulia-internal.so"}},
	{"QEMU (TCG)", []string{"qemu-system-x86_64", "qemu-system-aarch64", "qemu-system-i386"}, nil},
}

// trustedFile: a program or library installed by the system: in a system
// directory, owned by root, not writable by others, not deleted. A program
// an intruder named "node" in /tmp is not a JIT runtime.
func trustedFile(f linux.FileInfo) bool {
	if f.Deleted || f.UID != 0 || f.Mode&0o022 != 0 {
		return false
	}
	for _, dir := range []string{"/usr/", "/opt/", "/lib/", "/lib64/", "/snap/", "/nix/store/"} {
		if strings.HasPrefix(f.Path, dir) {
			return true
		}
	}
	return false
}

// jitRuntime names the JIT runtime a process runs, with the file that
// proves it, or "".
func jitRuntime(k *linux.Kernel, d *ProcDetail) (name, proof string) {
	match := func(base string, names []string, prefix bool) bool {
		for _, n := range names {
			if base == n || prefix && strings.HasPrefix(base, n) {
				return true
			}
		}
		return false
	}
	if d.ExeErr == nil && trustedFile(d.Exe) {
		for _, rt := range jitRuntimes {
			if match(path.Base(d.Exe.Path), rt.exe, false) {
				return rt.name, "program " + d.Exe.Path
			}
		}
	}
	seen := map[linux.Addr]bool{}
	for _, v := range d.VMAs {
		if v.Flags&linux.VMExec == 0 || v.FileAddr == 0 || seen[v.FileAddr] || len(seen) > 512 {
			continue
		}
		seen[v.FileAddr] = true
		f, err := k.FileInfo(uint64(v.FileAddr))
		if err != nil || !trustedFile(f) {
			continue
		}
		for _, rt := range jitRuntimes {
			if match(path.Base(f.Path), rt.libs, true) {
				return rt.name, "library " + f.Path
			}
		}
	}
	return "", ""
}
