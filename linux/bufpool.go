package linux

import "sync"

// Whole-image reads (kernel text, baseline regions) take tens of
// megabytes each. Their buffers come from one pool shared by every guest,
// so a daemon's memory grows with the reads in flight, not with the number
// of guests; idle buffers go back to the garbage collector.
var bufPool sync.Pool // of *[]byte

// BorrowBuffer returns a buffer of n bytes (contents undefined). Give it
// back with ReturnBuffer once nothing refers to it.
func BorrowBuffer(n int) []byte {
	if p, _ := bufPool.Get().(*[]byte); p != nil && cap(*p) >= n {
		return (*p)[:n]
	}
	return make([]byte, n)
}

// ReturnBuffer hands a buffer from BorrowBuffer back to the pool.
func ReturnBuffer(b []byte) {
	b = b[:0]
	bufPool.Put(&b)
}
