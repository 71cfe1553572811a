// Package kubewatch builds the ListerWatchers envgate's informers run on, so
// that an informer stops when its context ends even while the API server is
// down.
package kubewatch

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// ListWatch is list and watch as a cache.ListerWatcher whose streaming list
// (WatchList, on by default since client-go 0.35) does not hold up shutdown.
//
// client-go's Reflector.watchList backs off after a "retriable" watch error
// (connection refused, 429) with a bare <-clock.After(delay): it does not
// look at the context, so an informer stopped while the API server is down
// keeps its owner waiting for up to the 30 s backoff cap (client-go v0.36.3,
// tools/cache/reflector.go, watchList; the list-then-watch path selects on
// the stop channel). Such an error, from a streaming list only, is handed
// back without its retriable cause: the reflector then falls back to a plain
// list, fails the same way, and backs off in RunWithContext's
// delayHandler.Until, which does end with the context. A watch that resumes
// from a listed resource version keeps the error as is, and with it
// client-go's in-place retry.
func ListWatch(list cache.ListWithContextFunc, w cache.WatchFuncWithContext) *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: list,
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			wi, err := w(ctx, o)
			if err != nil && streamingList(o) && retriable(err) {
				return nil, &streamingListError{err: err}
			}
			return wi, err
		},
	}
}

func streamingList(o metav1.ListOptions) bool {
	return o.SendInitialEvents != nil && *o.SendInitialEvents
}

// retriable is client-go's isWatchErrorRetriable (reflector.go).
func retriable(err error) bool {
	return utilnet.IsConnectionRefused(err) || apierrors.IsTooManyRequests(err)
}

// streamingListError carries a streaming list's error text but not its
// cause (no Unwrap), so that client-go does not classify it as retriable.
type streamingListError struct{ err error }

func (e *streamingListError) Error() string { return "streaming list: " + e.err.Error() }
