// Package crwatch follows the objects of one custom resource in a cluster
// and hands every complete list to a callback, coalescing bursts of
// changes into one call.
package crwatch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/envgate/envgate/gateway/internal/kubewatch"
)

// Watcher lists and watches GVR in every namespace.
type Watcher struct {
	Client dynamic.Interface
	GVR    schema.GroupVersionResource
	// OnChange gets every object of the resource, once the cache has
	// synced and after each change. The maps are the cache's: read only.
	OnChange func(objs []map[string]any)

	synced atomic.Bool
}

// Synced reports whether the first complete list was delivered.
func (w *Watcher) Synced() bool { return w.synced.Load() }

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A plain informer on the dynamic client: client-go's dynamicinformer
	// package links every built-in API type into the binary, about 9 MB of
	// resident memory the gateway never uses.
	res := w.Client.Resource(w.GVR)
	inf := cache.NewSharedIndexInformer(kubewatch.ListWatch(
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return res.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(ctx, o)
		}), &unstructured.Unstructured{}, 0, cache.Indexers{})
	kick := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke,
	}); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { inf.RunWithContext(ctx) })
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("%s: cache did not sync: %w", w.GVR.Resource, ctx.Err())
	}
	w.deliver(inf.GetStore())
	w.synced.Store(true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
			w.deliver(inf.GetStore())
		}
	}
}

func (w *Watcher) deliver(store cache.Store) {
	items := store.List()
	objs := make([]map[string]any, 0, len(items))
	for _, item := range items {
		if u, ok := item.(*unstructured.Unstructured); ok {
			objs = append(objs, u.Object)
		}
	}
	w.OnChange(objs)
}

// Decode builds each watched object with from; one that does not build is
// logged and left out, so one bad object does not stop the others.
func Decode[T any](items []map[string]any, from func(map[string]any) (T, error), log *slog.Logger) []T {
	out := make([]T, 0, len(items))
	for _, m := range items {
		o, err := from(m) // reads only: the cache's object is shared
		if err != nil {
			log.Error("object not understood", "error", err)
			continue
		}
		out = append(out, o)
	}
	return out
}
