package meshlettest

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/admin"
	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy"
)

// File is meshlet's config file, built from the packages' own Config types: the proxy's sections at the top
// level, then admin, log, shutdown, discovery and tls. Log, Shutdown and Discovery mirror cmd/meshlet's
// logConfig, shutdownConfig and discoveryConfig (package main, not importable); cmd/meshlet's
// TestHarnessConfigSchema fails when the two differ. Render it with YAML.
type File struct {
	proxy.Config `yaml:",inline"`
	Admin        admin.Config     `yaml:"admin"`
	Log          Log              `yaml:"log"`
	Shutdown     Shutdown         `yaml:"shutdown"`
	Discovery    Discovery        `yaml:"discovery"`
	TLS          mtls.FilesConfig `yaml:"tls"`
	// SidecarFor is cmd/meshlet's sidecar_for: the Consul service ID whose sidecar registration configures meshlet.
	SidecarFor string `yaml:"sidecar_for"`
}

// Log is the log section (cmd/meshlet's logConfig).
type Log struct {
	Level     string `yaml:"level"`
	AccessLog bool   `yaml:"access_log"`
}

// Shutdown is the shutdown section (cmd/meshlet's shutdownConfig); a nil DrainDelay means the default.
type Shutdown struct {
	DrainDelay   *time.Duration `yaml:"drain_delay"`
	DrainTimeout time.Duration  `yaml:"drain_timeout"`
}

// Discovery is the discovery section (cmd/meshlet's discoveryConfig).
type Discovery struct {
	Consul *consul.Config `yaml:"consul"`
}

// Sidecar is the File most tests start from: service name, the admin listener on adminAddr, upstreams ups (none: no
// upstreams section) and shutdown {drain_delay: 0s, drain_timeout: 5s}, so that a stop does not wait.
func Sidecar(name, adminAddr string, ups ...proxy.UpstreamConfig) File {
	f := File{Admin: admin.Config{Listen: adminAddr}, Shutdown: Shutdown{DrainDelay: Duration(0), DrainTimeout: 5 * time.Second}}
	f.Service.Name, f.Upstreams = name, ups
	return f
}

// StartFile starts meshlet on f (Start, with f's admin listener).
func StartFile(t testing.TB, f File) *Proc {
	t.Helper()
	return Start(t, f.Admin.Listen, f.MustYAML(t))
}

// Consul is the discovery section for the Consul agent at addr ("": from CONSUL_HTTP_ADDR) with token ("": none
// written).
func Consul(addr, token string) Discovery {
	return Discovery{Consul: &consul.Config{Address: addr, Token: token}}
}

// Duration returns a pointer to d, for the fields where nil means the default and zero means zero.
func Duration(d time.Duration) *time.Duration { return &d }

// YAML renders f as YAML that decodes (strictly) to f again: a field at its zero value is left out, as if the
// file did not write it, which means the same (absent and zero decode alike); a non-nil pointer is written even
// to a zero value (drain_delay: 0s), and so is a non-nil empty list or map.
func (f File) YAML() (string, error) {
	n, err := node(reflect.ValueOf(f))
	if err != nil {
		return "", err
	}
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return "", err
	}
	return b.String(), enc.Close()
}

// MustYAML is YAML for tests: it fails t on an error.
func (f File) MustYAML(t interface {
	Helper()
	Fatal(...any)
}) string {
	t.Helper()
	s, err := f.YAML()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var durationType = reflect.TypeFor[time.Duration]()

// node renders v as a YAML node, leaving out the zero-valued fields of structs.
func node(v reflect.Value) (*yaml.Node, error) {
	switch {
	case v.Type() == durationType:
		return &yaml.Node{Kind: yaml.ScalarNode, Value: time.Duration(v.Int()).String()}, nil
	case v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface:
		return node(v.Elem())
	case v.Kind() == reflect.Struct:
		m := &yaml.Node{Kind: yaml.MappingNode}
		return m, fields(m, v)
	case v.Kind() == reflect.Slice:
		s := &yaml.Node{Kind: yaml.SequenceNode}
		for i := range v.Len() {
			e, err := node(v.Index(i))
			if err != nil {
				return nil, err
			}
			s.Content = append(s.Content, e)
		}
		return s, nil
	case v.Kind() == reflect.Map:
		m := &yaml.Node{Kind: yaml.MappingNode}
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return cmp.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
		for _, key := range keys {
			k, err := node(key)
			if err != nil {
				return nil, err
			}
			e, err := node(v.MapIndex(key))
			if err != nil {
				return nil, err
			}
			m.Content = append(m.Content, k, e)
		}
		return m, nil
	}
	n := &yaml.Node{}
	if err := n.Encode(v.Interface()); err != nil {
		return nil, fmt.Errorf("%s: %w", v.Type(), err)
	}
	return n, nil
}

// fields appends the fields of struct v that are set (not zero; pointers, lists and maps: not nil) to m, the
// fields of inline structs in place.
func fields(m *yaml.Node, v reflect.Value) error {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		fv := v.Field(i)
		if strings.Contains(","+opts+",", ",inline,") {
			if err := fields(m, fv); err != nil {
				return err
			}
			continue
		}
		switch fv.Kind() {
		case reflect.Pointer, reflect.Interface, reflect.Slice, reflect.Map:
			if fv.IsNil() {
				continue
			}
		default:
			if fv.IsZero() {
				continue
			}
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		val, err := node(fv)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: name}, val)
	}
	return nil
}
