package fieldmap

import (
	"reflect"
	"testing"
)

// Values share one array, and a field's second value does not overwrite
// the next field's first.
func TestAdd(t *testing.T) {
	m := map[string][]string{}
	vals := make([]string, 0, 4)
	vals = Add(m, vals, "a", "1")
	vals = Add(m, vals, "b", "2")
	vals = Add(m, vals, "a", "3")
	Add(m, vals, "c", "4")
	want := map[string][]string{"a": {"1", "3"}, "b": {"2"}, "c": {"4"}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %v, want %v", m, want)
	}
	if &m["b"][0] != &vals[1] {
		t.Fatal("b's value is not in vals' array")
	}
	if n := testing.AllocsPerRun(100, func() {
		m := make(map[string][]string, 3)
		vals := make([]string, 0, 3)
		vals = Add(m, vals, "a", "1")
		vals = Add(m, vals, "b", "2")
		Add(m, vals, "c", "3")
	}); n > 2 {
		t.Fatalf("%v allocations for 3 fields, want the map's and the array's", n)
	}
}
