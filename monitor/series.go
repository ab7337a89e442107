package monitor

import (
	"sync"
	"time"
)

// Point is a metric sample.
type Point struct {
	T int64   `json:"t"` // Unix seconds
	V float64 `json:"v"`
}

// Series keeps the recent history of a VM's metrics in ring buffers.
type Series struct {
	mu   sync.RWMutex
	size int
	m    map[string]*ring
}

type ring struct {
	pts  []Point
	next int
	full bool
}

// NewSeries keeps history points of every metric.
func NewSeries(history, interval time.Duration) *Series {
	n := int(history / interval)
	if n < 10 {
		n = 10
	}
	if n > 100000 {
		n = 100000
	}
	return &Series{size: n, m: map[string]*ring{}}
}

// Add records values at time t.
func (s *Series) Add(t time.Time, values map[string]float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range values {
		r := s.m[k]
		if r == nil {
			r = &ring{pts: make([]Point, s.size)}
			s.m[k] = r
		}
		r.pts[r.next] = Point{t.Unix(), v}
		r.next = (r.next + 1) % s.size
		if r.next == 0 {
			r.full = true
		}
	}
}

// Get returns the points of a metric since a time, oldest first.
func (s *Series) Get(name string, since time.Time) []Point {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r := s.m[name]
	if r == nil {
		return nil
	}
	var out []Point
	start, n := 0, r.next
	if r.full {
		start, n = r.next, s.size
	}
	for i := 0; i < n; i++ {
		p := r.pts[(start+i)%s.size]
		if p.T >= since.Unix() {
			out = append(out, p)
		}
	}
	return out
}

// Names lists the metrics with history.
func (s *Series) Names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for k := range s.m {
		out = append(out, k)
	}
	return out
}
