package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseRegisters(t *testing.T) {
	const s = `CPU#0
RAX=000000000001ad40 RBX=0000000000000000
CR0=80050033 CR2=00000000004f0215 CR3=0000000002884000 CR4=000006f0
EFER=0000000000000d01
CPU#1
CR0=80050033 CR2=0000000000000000 CR3=0000000102884801 CR4=000016f0
`
	r := ParseRegisters(s)
	if len(r) != 2 || r[0].CR3 != 0x2884000 || r[1].CR3 != 0x102884801 || r[1].CR4 != 0x16f0 || r[0].EFER != 0xd01 {
		t.Fatalf("%+v", r)
	}
}

// fakeQEMU serves a QMP greeting and answers; "hang" never answers.
func fakeQEMU(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 2, "minor": 2, "major": 7}}, "capabilities": []}}` + "\n"))
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var req struct {
				Execute string `json:"execute"`
				ID      string `json:"id"`
			}
			json.Unmarshal(sc.Bytes(), &req)
			switch req.Execute {
			case "hang":
			case "bad":
				c.Write([]byte(`{"error": {"class": "GenericError", "desc": "no such thing"}, "id": "` + req.ID + `"}` + "\n"))
			default:
				c.Write([]byte(`{"event": "RESUME", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}` + "\n"))
				c.Write([]byte(`{"return": {"running": true, "status": "running"}, "id": "` + req.ID + `"}` + "\n"))
			}
		}
	}()
	return p
}

func TestClient(t *testing.T) {
	p := fakeQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version != "7.2.2" || c.PID() != os.Getpid() {
		t.Fatalf("version %s pid %d", c.Version, c.PID())
	}
	st, err := c.Run(ctx, "query-status", nil)
	if err != nil || string(st) != `{"running": true, "status": "running"}` {
		t.Fatalf("%s %v", st, err)
	}
	if _, err := c.Run(ctx, "bad", nil); err == nil || !strings.Contains(err.Error(), "no such thing") {
		t.Fatalf("QMP error not passed on: %v", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	start := time.Now()
	if _, err := c.Run(short, "hang", nil); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("a hung QEMU must not block past the deadline: %v after %v", err, time.Since(start))
	}
	select {
	case ev := <-c.Events():
		if ev.Event != "RESUME" {
			t.Fatalf("event %+v", ev)
		}
	default:
		t.Fatal("no event delivered")
	}
}
