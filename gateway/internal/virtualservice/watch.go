package virtualservice

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
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

	mu     sync.Mutex
	synced bool
}

// Synced reports whether the first complete result was delivered.
func (w *Watcher) Synced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.synced
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A plain informer on the dynamic client: client-go's dynamicinformer
	// package links every built-in API type into the binary, about 9 MB of
	// resident memory the gateway never uses.
	res := w.Client.Resource(GVR)
	inf := cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return res.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(ctx, o)
		},
	}, &unstructured.Unstructured{}, 0, cache.Indexers{})
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
		return fmt.Errorf("virtualservices: cache did not sync: %w", ctx.Err())
	}
	w.rebuild(inf.GetStore())
	w.mu.Lock()
	w.synced = true
	w.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
			w.rebuild(inf.GetStore())
		}
	}
}

func (w *Watcher) rebuild(store cache.Store) {
	var objs []*Object
	for _, item := range store.List() {
		u, ok := item.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		// The cache's object is shared: FromMap only reads it.
		o, err := FromMap(u.Object)
		if err != nil {
			w.Log.Error("virtualservice not understood", "object", u.GetNamespace()+"/"+u.GetName(), "error", err)
			continue
		}
		objs = append(objs, o)
	}
	w.OnChange(Build(objs, w.Options))
}
