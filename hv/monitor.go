// Package hv is the control plane of hypervisors: a QEMU monitor reached
// directly (package qmp) or through libvirt, behind one interface.
package hv

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/vmwatch/vmwatch/hv/qmp"
)

// Monitor is a QEMU monitor: QMP commands, HMP through QMP, and the QEMU
// process's id when known.
type Monitor interface {
	Run(ctx context.Context, command string, args any) (json.RawMessage, error)
	HMP(ctx context.Context, line string) (string, error)
	PID() int
	Close() error
}

var _ Monitor = (*qmp.Client)(nil)

// Status returns QEMU's run state (query-status): running, paused,
// shutdown, internal-error, guest-panicked...
func Status(ctx context.Context, m Monitor) (running bool, status string, err error) {
	raw, err := m.Run(ctx, "query-status", nil)
	if err != nil {
		return false, "", err
	}
	var st struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return false, "", fmt.Errorf("query-status: %w", err)
	}
	return st.Running, st.Status, nil
}
