package destinationrule

import (
	"context"
	"log/slog"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/envgate/envgate/gateway/internal/crwatch"
)

// GVR is the DestinationRule resource the watcher lists and watches.
var GVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"}

// Watcher follows the DestinationRules of a cluster and hands every new
// merged result to OnChange.
type Watcher struct {
	Client         dynamic.Interface
	ProxyNamespace string
	OnChange       func(*Result)
	Log            *slog.Logger

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
	w.OnChange(Build(crwatch.Decode(items, FromMap, w.Log), w.ProxyNamespace))
}
