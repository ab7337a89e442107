package monitor

import "context"

// startLibvirt discovers libvirt domains (added in a later step).
func (d *Daemon) startLibvirt(ctx context.Context) error { return nil }
