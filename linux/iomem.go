package linux

import (
	"fmt"
	"strings"
)

// The kernel's resource trees, as /proc/iomem and /proc/ioports show them
// (kernel/resource.c): iomem_resource and ioport_resource, each a tree of
// struct resource linked by child, sibling and parent.

// Resource is one line of /proc/iomem or /proc/ioports.
type Resource struct {
	Start Addr   `json:"start"`
	End   Addr   `json:"end"`
	Name  string `json:"name"`
	// Depth is the nesting below the root (0 for top-level entries).
	Depth int    `json:"depth"`
	Flags uint64 `json:"flags"`
}

// Line renders the resource as kernel/resource.c's r_show does, with
// width hex digits (8 for memory, 4 for I/O ports) and the nesting shown
// by two spaces a level (at most MAX_IORES_LEVEL).
func (r Resource) Line(width int) string {
	d := min(r.Depth, maxIOResLevel)
	return fmt.Sprintf("%s%0*x-%0*x : %s", strings.Repeat("  ", d), width, uint64(r.Start), width, uint64(r.End), r.Name)
}

const (
	maxIOResLevel = 5
	maxResources  = 1 << 16
	maxResDepth   = 64
)

// Resources walks iomem_resource, or ioport_resource with ports, in
// /proc's order (a resource, its children, then its next sibling).
func (k *Kernel) Resources(ports bool) ([]Resource, error) {
	sym := "iomem_resource"
	if ports {
		sym = "ioport_resource"
	}
	root, err := k.Symbol(sym)
	if err != nil {
		return nil, err
	}
	rT, err := k.Types.Struct("resource")
	if err != nil {
		return nil, err
	}
	read := func(a uint64) (Value, *fields, error) {
		v, err := k.ReadValue(rT, a)
		if err != nil {
			return Value{}, nil, fmt.Errorf("resource %#x: %w", a, err)
		}
		return v, &fields{v: v}, nil
	}
	_, rf, err := read(root)
	if err != nil {
		return nil, err
	}
	var out []Resource
	seen := map[uint64]bool{root: true}
	// depth-first: the stack holds the next node and its depth
	type item struct {
		a     uint64
		depth int
	}
	stack := []item{}
	if c := rf.ptr("child"); c != 0 {
		stack = append(stack, item{c, 0})
	}
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[it.a] || len(out) >= maxResources || it.depth > maxResDepth {
			return out, fmt.Errorf("%s: resource %#x reached twice, or more than %d resources or %d levels: %w", sym, it.a, maxResources, maxResDepth, ErrListCorrupt)
		}
		seen[it.a] = true
		_, f, err := read(it.a)
		if err != nil {
			return out, err
		}
		r := Resource{Start: Addr(f.uint("start")), End: Addr(f.uint("end")), Depth: it.depth, Flags: f.uint("flags"), Name: "<BAD>"}
		if np := f.ptr("name"); np != 0 {
			if s, err := k.ReadCString(np, 256); err == nil {
				r.Name = s
			}
		}
		sib, child := f.ptr("sibling"), f.ptr("child")
		if len(f.errs) > 0 {
			return out, fmt.Errorf("resource %#x: %s", it.a, strings.Join(f.errs, "; "))
		}
		out = append(out, r)
		if sib != 0 {
			stack = append(stack, item{sib, it.depth})
		}
		if child != 0 {
			stack = append(stack, item{child, it.depth + 1})
		}
	}
	return out, nil
}
