package credential

import (
	"context"
	"sync"
	"time"
)

// Fetcher obtains a fresh token; Cache decides when to call it.
type Fetcher interface {
	Fetch(ctx context.Context) (Credential, error)
}

// Cache is a Source that holds a token until shortly before it expires.
//
// Inside the refresh window (RefreshBefore ahead of expiry) one caller
// refreshes while the others keep using the still-valid token; once the
// token has expired, callers wait for the single in-flight refresh rather
// than each starting their own. A failed refresh is retried by the next
// caller, not in a loop.
type Cache struct {
	fetcher Fetcher
	// RefreshBefore is how long before expiry a refresh starts. Entra
	// tokens live about an hour; five minutes leaves room for retries.
	RefreshBefore time.Duration
	now           func() time.Time

	mu       sync.Mutex
	cur      Credential
	inflight chan struct{} // closed when the running refresh finishes
	lastErr  error
}

// NewCache wraps f with a five-minute refresh window.
func NewCache(f Fetcher) *Cache {
	return &Cache{fetcher: f, RefreshBefore: 5 * time.Minute, now: time.Now}
}

// Credential returns a valid token, refreshing it if needed.
func (c *Cache) Credential(ctx context.Context) (Credential, error) {
	for {
		c.mu.Lock()
		now := c.now()
		valid := c.cur.Secret != "" && now.Before(c.cur.ExpiresAt)
		fresh := valid && now.Before(c.cur.ExpiresAt.Add(-c.RefreshBefore))
		if fresh {
			cur := c.cur
			c.mu.Unlock()
			return cur, nil
		}
		if c.inflight == nil {
			c.inflight = make(chan struct{})
			done := c.inflight
			c.mu.Unlock()
			if valid {
				// Refresh in the background; this caller has a good token.
				go c.refresh(context.WithoutCancel(ctx), done)
				return c.current()
			}
			c.refresh(ctx, done)
			c.mu.Lock()
			cur, err := c.cur, c.lastErr
			c.mu.Unlock()
			if err != nil && !(cur.Secret != "" && c.now().Before(cur.ExpiresAt)) {
				return Credential{}, err
			}
			return cur, nil
		}
		done := c.inflight
		c.mu.Unlock()
		if valid {
			return c.current()
		}
		select {
		case <-done:
			c.mu.Lock()
			cur, err := c.cur, c.lastErr
			c.mu.Unlock()
			if cur.Secret != "" && c.now().Before(cur.ExpiresAt) {
				return cur, nil
			}
			if err != nil {
				return Credential{}, err
			}
		case <-ctx.Done():
			return Credential{}, ctx.Err()
		}
	}
}

func (c *Cache) current() (Credential, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, nil
}

func (c *Cache) refresh(ctx context.Context, done chan struct{}) {
	cred, err := c.fetcher.Fetch(ctx)
	c.mu.Lock()
	if err == nil {
		c.cur = cred
	}
	c.lastErr = err
	c.inflight = nil
	c.mu.Unlock()
	close(done)
}
