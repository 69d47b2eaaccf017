package config_test

import (
	"fmt"

	"github.com/blockmirror/blockmirror/internal/config"
)

func ExampleParse() {
	_, err := config.Parse([]byte(`[node]
name = "alpha"
certs = "/etc/blockmirror/certs"

[[volumes]]
name = "db"
role = "primary"
data = "/var/lib/blockmirror/db"
sync_acks = 3
mirorrs = [{ name = "beta", address = "10.0.0.2:7443" }]
`), "blockmirror.toml")
	fmt.Println(err)
	// Output:
	// blockmirror.toml:9: volume "db": sync_acks 3 exceeds the 0 mirrors listed
	// blockmirror.toml:10: unknown key volumes[0].mirorrs — did you mean mirrors?
}

func ExampleConfig_Volume() {
	c, err := config.Load("testdata/blockmirror.toml")
	if err != nil {
		fmt.Println(err)
		return
	}
	// Flags override the file: the command merges them into the volume.
	v, _ := c.Volume("db")
	v.SyncAcks = 1
	fmt.Println(v.Name, v.Role, v.Size, v.Mode, v.SyncAcks, len(v.Mirrors), v.MaxLag)
	// Output: db primary 10G sync 1 2 5s
}
