package gctune

import (
	"os"
	"path/filepath"
	"testing"
)

func TestContainerLimit(t *testing.T) {
	dir := t.TempDir()
	write := func(name, v string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, tc := range map[string]struct {
		files []string
		want  int64
	}{
		"v2 limit of the manifests": {[]string{write("v2", "268435456\n")}, 256 << 20},
		"v2 no limit":               {[]string{write("v2max", "max\n"), write("v1", "1048576\n")}, 0},
		"v1 limit":                  {[]string{filepath.Join(dir, "missing"), write("v1b", "1048576\n")}, 1 << 20},
		"v1 no limit":               {[]string{write("v1max", "9223372036854771712\n")}, 0},
		"none":                      {[]string{filepath.Join(dir, "missing")}, 0},
	} {
		if got := containerLimit(tc.files); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
}
