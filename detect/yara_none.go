//go:build !yara

package detect

import "errors"

// YaraAvailable reports whether this build includes YARA.
const YaraAvailable = false

// CompileYara fails: this build has no YARA.
func CompileYara(path string) (Scanner, error) {
	return nil, errors.New("this vmwatch was built without YARA support: build it with `go build -tags yara` (Debian: apt-get install libyara-dev)")
}
