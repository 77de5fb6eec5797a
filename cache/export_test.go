package cache

// Reloads returns how many times the cache replaced its state by a reload.
func (c *Cache) Reloads() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.reloads
}
