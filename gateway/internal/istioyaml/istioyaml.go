// Package istioyaml reads Istio networking objects: the documents of one
// kind in a YAML or JSON stream (what kubectl apply -f takes), and the typed
// view of a decoded object.
package istioyaml

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Decode returns the documents of kind in a multi-document YAML or JSON
// stream, as decoded maps; other kinds are skipped.
func Decode(r io.Reader, kind string) ([]map[string]any, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var out []map[string]any
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		if raw != nil && raw["kind"] == kind {
			out = append(out, raw)
		}
	}
}

// Objects builds every document of kind in a multi-document stream with
// build; a document without a namespace gets def.
func Objects[T any](r io.Reader, kind, def string, build func(map[string]any) (T, error)) ([]T, error) {
	raws, err := Decode(r, kind)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(raws))
	for _, raw := range raws {
		m, _ := raw["metadata"].(map[string]any)
		if m == nil {
			m = map[string]any{}
			raw["metadata"] = m
		}
		if ns, _ := m["namespace"].(string); ns == "" {
			m["namespace"] = def
		}
		o, err := build(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, nil
}

// Into fills v, the typed view of an object, from its decoded form, which
// it does not modify, and checks the object is of networking.istio.io v1,
// v1beta1 or v1alpha3 (the versions the API server converts between).
func Into(raw map[string]any, v any) error {
	b, err := json.Marshal(raw)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return err
	}
	switch raw["apiVersion"] {
	case "networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3":
		return nil
	}
	name := ""
	if m, ok := raw["metadata"].(map[string]any); ok {
		name, _ = m["name"].(string)
	}
	return fmt.Errorf("%v %s: apiVersion %q is not networking.istio.io v1, v1beta1 or v1alpha3", raw["kind"], name, raw["apiVersion"])
}
