package cache_test

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cache"
)

func ExampleNew() {
	ctx := context.Background()
	cli := cluster.Client()
	const prefix = "/example/cache/"
	defer cli.Delete(ctx, prefix, clientv3.WithPrefix())
	if _, err := cli.Put(ctx, prefix+"a", "1"); err != nil {
		fmt.Println(err)
		return
	}

	c, err := cache.New(ctx, cli, prefix)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	// Read your own write: wait for its revision, then read from memory.
	resp, err := cli.Put(ctx, prefix+"b", "2")
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := c.WaitRevision(ctx, resp.Header.Revision); err != nil {
		fmt.Println(err)
		return
	}
	kvs, _ := c.List(prefix)
	for _, kv := range kvs {
		fmt.Println(kv.Key, string(kv.Value))
	}
	// Output:
	// /example/cache/a 1
	// /example/cache/b 2
}

func ExampleNewValue() {
	ctx := context.Background()
	cli := cluster.Client()
	const key = "/example/config/http"
	defer cli.Delete(ctx, key)

	type HTTPConfig struct {
		Port int `json:"port"`
	}
	v, err := cache.NewValue(ctx, cli, key,
		cache.WithDefault(HTTPConfig{Port: 8080}),
		cache.WithValidator(func(c HTTPConfig) error {
			if c.Port <= 0 || c.Port > 65535 {
				return fmt.Errorf("port %d out of range", c.Port)
			}
			return nil
		}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer v.Close()
	fmt.Println("default:", v.Load().Value.Port)

	for _, stored := range []string{`{"port": 9000}`, `{"port": -1}`} {
		resp, err := cli.Put(ctx, key, stored)
		if err != nil {
			fmt.Println(err)
			return
		}
		s, err := v.WaitRevision(ctx, resp.Header.Revision)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println("port:", s.Value.Port, "rejected:", s.Err != nil)
	}
	// Output:
	// default: 8080
	// port: 9000 rejected: false
	// port: 9000 rejected: true
}
