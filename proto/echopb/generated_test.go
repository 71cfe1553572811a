package echopb

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedCodeIsFresh regenerates the Go code with the pinned tools in
// ./bin (installed by make) and fails when the committed files differ: run
// `make proto` after changing echo.proto.
func TestGeneratedCodeIsFresh(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin")
	for _, tool := range []string{"buf", "protoc-gen-go", "protoc-gen-go-grpc"} {
		if _, err := os.Stat(filepath.Join(bin, tool)); err != nil {
			t.Fatalf("%s not found: run `make test`, which installs the pinned tools (%v)", tool, err)
		}
	}
	out := t.TempDir()
	template := `{"version":"v2","plugins":[
		{"local":"` + filepath.Join(bin, "protoc-gen-go") + `","out":"echopb","opt":"paths=source_relative"},
		{"local":"` + filepath.Join(bin, "protoc-gen-go-grpc") + `","out":"echopb","opt":"paths=source_relative"}]}`
	cmd := exec.Command(filepath.Join(bin, "buf"), "generate", "--template", template, "-o", out)
	cmd.Dir = filepath.Join(root, "proto")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, b)
	}
	for _, f := range []string{"echo.pb.go", "echo_grpc.pb.go"} {
		fresh, err := os.ReadFile(filepath.Join(out, "echopb", f))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("proto/echopb/%s is stale: run `make proto` and commit the result", f)
		}
	}
}
