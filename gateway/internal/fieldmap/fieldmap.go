// Package fieldmap builds maps of header fields (name to values, as
// http.Header and gRPC's metadata.MD are) whose values share one backing
// array: a slice per field was an allocation per field of every request.
package fieldmap

// Add adds value to m's field name, in vals' array for the field's first
// value (capped there, so that a second value is appended to a copy and
// never over the next field's); it returns vals, to pass to the next Add.
func Add(m map[string][]string, vals []string, name, value string) []string {
	if v, ok := m[name]; ok {
		m[name] = append(v, value)
		return vals
	}
	vals = append(vals, value)
	n := len(vals)
	m[name] = vals[n-1 : n : n]
	return vals
}
