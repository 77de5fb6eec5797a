package testcluster

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// User is a name and password in a cluster started WithAuth.
type User struct {
	Name     string
	Password string
}

func enableAuth(ctx context.Context, cli *clientv3.Client, root User) error {
	if _, err := cli.UserAdd(ctx, root.Name, root.Password); err != nil {
		return err
	}
	if _, err := cli.RoleAdd(ctx, "root"); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return err
	}
	if _, err := cli.UserGrantRole(ctx, root.Name, "root"); err != nil {
		return err
	}
	_, err := cli.AuthEnable(ctx)
	return err
}

// AddUser creates a user whose only role grants read and write on the keys
// that start with prefix, and returns its credentials; make its client with
// NewClient(AsUser(u)). The cluster must run WithAuth.
func (c *Cluster) AddUser(ctx context.Context, name, prefix string) (User, error) {
	if !c.cfg.auth {
		return User{}, errors.New("testcluster: AddUser needs a cluster started WithAuth")
	}
	if name == "" || name == "root" || prefix == "" {
		return User{}, fmt.Errorf("testcluster: AddUser(%q, %q): need a non-root name and a non-empty prefix", name, prefix)
	}
	admin, err := c.adminClient()
	if err != nil {
		return User{}, err
	}
	u := User{Name: name, Password: randomHex(12)}
	role := name + "-rw"
	steps := []func() error{
		func() error { _, err := admin.RoleAdd(ctx, role); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, role, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, u.Name, u.Password); return err },
		func() error { _, err := admin.UserGrantRole(ctx, u.Name, role); return err },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return User{}, fmt.Errorf("testcluster: add user %q: %w", name, err)
		}
	}
	return u, nil
}
