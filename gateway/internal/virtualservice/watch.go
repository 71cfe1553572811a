package virtualservice

import (
	"context"
	"log/slog"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/envgate/envgate/gateway/internal/crwatch"
)

// GVR is the VirtualService resource the watcher lists and watches; the
// API server converts objects stored as v1beta1 or v1alpha3.
var GVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}

// Watcher follows the VirtualServices of a cluster and hands every new
// merged result to OnChange, so routing follows the objects that drive the
// Istio ingress gateway, without a restart.
type Watcher struct {
	Client   dynamic.Interface
	Options  Options
	OnChange func(*Result)
	Log      *slog.Logger

	w crwatch.Watcher
}

// Synced reports whether the first complete result was delivered.
func (w *Watcher) Synced() bool { return w.w.Synced() }

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	// Field by field: Synced may be reading w.w's flag meanwhile.
	w.w.Client, w.w.GVR, w.w.OnChange = w.Client, GVR, w.rebuild
	return w.w.Run(ctx)
}

func (w *Watcher) rebuild(items []map[string]any) {
	w.OnChange(Build(crwatch.Decode(items, FromMap, w.Log), w.Options))
}
