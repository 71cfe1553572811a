package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// checkNode walks a decoded YAML document against the shape of t and
// reports, in the file's own terms (line, key path, what to write), what
// yaml.v3 would otherwise report in Go's: an unknown key with the known
// one it most resembles, a duration without a unit, a number or a
// true/false that is neither. What it lets through decodes without error.
func checkNode(n *yaml.Node, t reflect.Type, path string) []error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	at := func(format string, a ...any) error {
		where := path
		if where == "" {
			where = "the top level"
		}
		return fmt.Errorf("line %d: %s: %s", n.Line, where, fmt.Sprintf(format, a...))
	}
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		if n.Kind != yaml.ScalarNode {
			return []error{at("want a duration such as 5s")}
		}
		if _, err := time.ParseDuration(n.Value); err != nil {
			if _, numErr := strconv.ParseFloat(n.Value, 64); numErr == nil {
				return []error{at("%s has no unit: write %ss (or ms, m, h)", n.Value, n.Value)}
			}
			return []error{at("%q is not a duration: write it as 5s, 300ms, 2m or 1h", n.Value)}
		}
		return nil
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return []error{at("want a mapping of keys (%s)", strings.Join(yamlKeys(t), ", "))}
		}
		var errs []error
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fieldByKey(t, k.Value)
			if !ok {
				errs = append(errs, unknownKey(k, t, path))
				continue
			}
			errs = append(errs, checkNode(v, f.Type, join(path, k.Value))...)
		}
		return errs
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			return []error{at("want a mapping")}
		}
		var errs []error
		for i := 0; i+1 < len(n.Content); i += 2 {
			errs = append(errs, checkNode(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value))...)
		}
		return errs
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return []error{at("want a list ([a, b] or lines starting with -)")}
		}
		var errs []error
		for i, c := range n.Content {
			errs = append(errs, checkNode(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return errs
	}
	if n.Kind != yaml.ScalarNode {
		return []error{at("want a single value, not a list or mapping")}
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		if _, err := strconv.ParseInt(n.Value, 0, 64); err != nil {
			return []error{at("%q is not a whole number", n.Value)}
		}
	case reflect.Uint32, reflect.Uint64, reflect.Uint:
		if _, err := strconv.ParseUint(n.Value, 0, 64); err != nil {
			return []error{at("%q is not a whole number of zero or more", n.Value)}
		}
	case reflect.Bool:
		if n.Tag != "!!bool" {
			return []error{at("%q is not true or false", n.Value)}
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fieldByKey is the field of struct t that YAML key k names.
func fieldByKey(t reflect.Type, k string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name == k {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// yamlKeys are the keys struct t accepts.
func yamlKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name != "" && name != "-" {
			keys = append(keys, name)
		}
	}
	return keys
}

// unknownKey says which key k may have meant: the known key it matches
// but for case, or the nearest by edit distance if that is close enough to
// be a slip; else the keys there are.
func unknownKey(k *yaml.Node, t reflect.Type, path string) error {
	where := "at the top level"
	if path != "" {
		where = "in " + path
	}
	keys := yamlKeys(t)
	best, bestD := "", len(k.Value)
	for _, c := range keys {
		if strings.EqualFold(c, k.Value) {
			best, bestD = c, 0
			break
		}
		if d := editDistance(strings.ToLower(k.Value), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	if best != "" && bestD <= max(2, len(best)/4) {
		return fmt.Errorf("line %d: unknown key %q %s: did you mean %q?", k.Line, k.Value, where, best)
	}
	return fmt.Errorf("line %d: unknown key %q %s (known: %s)", k.Line, k.Value, where, strings.Join(keys, ", "))
}

// editDistance is the Levenshtein distance of a and b (keys are short).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
