package config

import (
	"fmt"
	"reflect"
	"strings"
)

// Process is the one typed value a daemon process is wired from: the
// [node] settings and the volumes of one role the process runs, with the
// command line merged over the configuration file (see Merge). A process
// serving one volume is a Process with one volume.
//
// Unlike a parsed file, a Process may hold settings the file format keeps
// to the other role, because flags can give them: a primary's Listen (the
// address where it answers other primaries) and a mirror's replication
// settings (used once it is promoted online).
type Process struct {
	// Role is RolePrimary or RoleMirror.
	Role string
	// Node is the process's node settings.
	Node NodeConfig
	// Volumes are the volumes to run, all of Role; at least one. A volume
	// given by flags alone has no Name.
	Volumes []VolumeConfig
}

// Merge returns the Process for role from the file c: every volume of that
// role, or only the one called name when name is not empty, with the keys
// in set copied over from the command line's node and vol (flags override
// the file). c nil means there is no file: the process runs the one
// volume vol describes, within node.
//
// set holds key names as the file spells them ("data", "nbd_tls",
// "mirrors"); an unknown key is an error, as is a name that matches no
// volume of role.
func Merge(c *Config, file, role, name string, node NodeConfig, vol VolumeConfig, set []string) (*Process, error) {
	for _, k := range set {
		if !hasKey(reflect.TypeFor[NodeConfig](), k) && !hasKey(reflect.TypeFor[VolumeConfig](), k) {
			return nil, fmt.Errorf("config: no key %q to merge from the command line", k)
		}
	}
	if c == nil {
		if name != "" {
			return nil, fmt.Errorf("a volume name (%q) needs a configuration file", name)
		}
		vol.Role = role
		return &Process{Role: role, Node: node, Volumes: []VolumeConfig{vol}}, nil
	}
	p := &Process{Role: role, Node: c.Node}
	copyKeys(&p.Node, &node, set)
	for _, v := range c.Volumes {
		if v.Role != role || name != "" && v.Name != name {
			continue
		}
		v.Mirrors = append([]MirrorConfig(nil), v.Mirrors...)
		v.Allow = append([]string(nil), v.Allow...)
		copyKeys(&v, &vol, set)
		p.Volumes = append(p.Volumes, v)
	}
	if len(p.Volumes) == 0 {
		if name != "" {
			return nil, fmt.Errorf("%s: no %s volume named %q", file, role, name)
		}
		return nil, fmt.Errorf("%s: no %s volume", file, role)
	}
	return p, nil
}

// Names returns the volumes' names, in order.
func (p *Process) Names() []string {
	names := make([]string, len(p.Volumes))
	for i, v := range p.Volumes {
		names[i] = v.Name
	}
	return names
}

// Label names a volume in logs and errors: its name, else its data
// directory.
func (v *VolumeConfig) Label() string {
	if v.Name != "" {
		return v.Name
	}
	return v.Data
}

func hasKey(t reflect.Type, key string) bool {
	fields, _ := fieldsOf(t)
	_, ok := fields[key]
	return ok
}

// copyKeys copies the fields of *src named by keys (toml key names) to
// *dst; keys that struct does not have are skipped.
func copyKeys[T any](dst, src *T, keys []string) {
	d, s := reflect.ValueOf(dst).Elem(), reflect.ValueOf(src).Elem()
	fields, _ := fieldsOf(d.Type())
	for _, k := range keys {
		if i, ok := fields[strings.TrimSpace(k)]; ok {
			d.Field(i).Set(s.Field(i))
		}
	}
}
