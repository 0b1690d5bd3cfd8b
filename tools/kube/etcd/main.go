// Command etcd is the real etcd server, built from the pinned Go module so
// that envtest and `kars dev` need no download from outside the module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
