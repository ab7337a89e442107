// Package qmp is a small client for the QEMU Machine Protocol over a unix
// socket: commands with deadlines, asynchronous events, and the peer
// credentials of the socket (which name the QEMU process).
//
// It is written here rather than taken from digitalocean/go-qemu because that
// client's SocketMonitor has no per-command deadline (a hung QEMU would block
// its caller forever) and keeps its connection private, so the peer's PID
// (SO_PEERCRED) cannot be read from it.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Error is an error answer from QEMU.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("QMP %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// Event is an asynchronous QMP event.
type Event struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Client is a QMP connection. It is safe for concurrent use.
type Client struct {
	path    string
	conn    *net.UnixConn
	pid     int
	Version string

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan message
	err     error // set when the reader stops
	done    chan struct{}
	events  chan Event
	wmu     sync.Mutex
}

type message struct {
	ID     string          `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// Dial connects to a QMP unix socket and negotiates capabilities. The context
// bounds the whole handshake.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP socket %s: %w", path, err)
	}
	uc := c.(*net.UnixConn)
	cl := &Client{path: path, conn: uc, pending: map[string]chan message{}, done: make(chan struct{}), events: make(chan Event, 64)}
	if pid, err := peerPID(uc); err == nil {
		cl.pid = pid
	}
	if dl, ok := ctx.Deadline(); ok {
		uc.SetReadDeadline(dl)
	} else {
		uc.SetReadDeadline(time.Now().Add(10 * time.Second))
	}
	r := bufio.NewReaderSize(uc, 1<<16)
	line, err := r.ReadBytes('\n')
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("QMP socket %s: no greeting (is another client connected? QEMU serves one at a time): %w", path, err)
	}
	var greet struct {
		QMP struct {
			Version struct {
				QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
			} `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &greet); err != nil {
		uc.Close()
		return nil, fmt.Errorf("QMP socket %s: bad greeting %q: %w", path, line, err)
	}
	v := greet.QMP.Version.QEMU
	cl.Version = fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	uc.SetReadDeadline(time.Time{})
	go cl.readLoop(r)
	if _, err := cl.Run(ctx, "qmp_capabilities", nil); err != nil {
		cl.Close()
		return nil, err
	}
	return cl, nil
}

func peerPID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	err = raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return int(cred.Pid), nil
}

// PID is the process id of the QEMU at the other end (SO_PEERCRED), or 0.
func (c *Client) PID() int { return c.pid }

// Path is the socket path.
func (c *Client) Path() string { return c.path }

// Events delivers asynchronous events. Events are dropped when nobody reads.
func (c *Client) Events() <-chan Event { return c.events }

func (c *Client) readLoop(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break
		}
		var m message
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		if m.Event != "" {
			var ev Event
			if json.Unmarshal(line, &ev) == nil {
				select {
				case c.events <- ev:
				default:
				}
			}
			continue
		}
		c.mu.Lock()
		ch := c.pending[m.ID]
		delete(c.pending, m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
	c.mu.Lock()
	if err == nil {
		err = errors.New("connection closed")
	}
	c.err = err
	c.mu.Unlock()
	close(c.done)
}

// Run executes a QMP command with optional arguments and returns its "return"
// value. The context bounds the wait for the answer.
func (c *Client) Run(ctx context.Context, command string, args any) (json.RawMessage, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("QMP %s on %s: %w", command, c.path, err)
	}
	c.nextID++
	id := "vmwatch-" + strconv.FormatUint(c.nextID, 10)
	ch := make(chan message, 1)
	c.pending[id] = ch
	c.mu.Unlock()

	req := map[string]any{"execute": command, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	c.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
	} else {
		c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	}
	_, err = c.conn.Write(b)
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("QMP %s on %s: %w", command, c.path, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			return nil, &Error{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		return m.Return, nil
	case <-ctx.Done():
		c.forget(id)
		return nil, fmt.Errorf("QMP %s on %s: no answer: %w", command, c.path, ctx.Err())
	case <-c.done:
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("QMP %s on %s: %w", command, c.path, err)
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// HMP runs a human monitor command through QMP and returns its text output.
func (c *Client) HMP(ctx context.Context, line string) (string, error) {
	raw, err := c.Run(ctx, "human-monitor-command", map[string]string{"command-line": line})
	if err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("HMP %q: unexpected answer %s", line, raw)
	}
	return s, nil
}

// Close ends the connection.
func (c *Client) Close() error {
	return c.conn.Close()
}

// CPURegisters are the control registers of one vCPU as HMP `info registers`
// prints them.
type CPURegisters struct {
	CPU                 int
	CR0, CR3, CR4, EFER uint64
}

// ParseRegisters reads the control registers of every CPU from the output of
// HMP `info registers -a` (or `info registers` for the current CPU).
func ParseRegisters(text string) []CPURegisters {
	var out []CPURegisters
	cur := -1
	for _, f := range strings.Fields(text) {
		if strings.HasPrefix(f, "CPU#") {
			n, _ := strconv.Atoi(strings.TrimPrefix(f, "CPU#"))
			out = append(out, CPURegisters{CPU: n})
			cur = len(out) - 1
			continue
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			continue
		}
		if cur < 0 {
			out = append(out, CPURegisters{})
			cur = 0
		}
		x, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			continue
		}
		switch k {
		case "CR0":
			out[cur].CR0 = x
		case "CR3":
			out[cur].CR3 = x
		case "CR4":
			out[cur].CR4 = x
		case "EFER":
			out[cur].EFER = x
		}
	}
	return out
}
