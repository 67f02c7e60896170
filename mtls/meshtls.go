package mtls

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// MeshTLS is what the mesh's own configuration (Consul's mesh config entry, TLS.Incoming or TLS.Outgoing) says of
// one direction's TLS: a minimum and a maximum version ("1.2" or "1.3"; "" says nothing: the config file's
// tls.min_version, and Go's maximum) and the TLS 1.2 cipher suites (nil: Go's; TLS 1.3's are not configurable).
type MeshTLS struct {
	Min, Max     string
	CipherSuites []uint16
}

// apply sets c's versions and suites: Min, else fileMin; Max when set, and a minimum above the maximum lowered to
// it (the mesh's maximum wins).
func (m MeshTLS) apply(c *tls.Config, fileMin uint16) {
	c.MinVersion = fileMin
	if v, err := tlsVersion(m.Min); m.Min != "" && err == nil {
		c.MinVersion = v
	}
	if v, err := tlsVersion(m.Max); m.Max != "" && err == nil {
		c.MaxVersion = v
		c.MinVersion = min(c.MinVersion, v)
	}
	if len(m.CipherSuites) > 0 {
		c.CipherSuites = slices.Clone(m.CipherSuites)
	}
}

func (m MeshTLS) key() string { return fmt.Sprint(m.Min, "/", m.Max, "/", m.CipherSuites) }

// MeshVersion reads a version of Consul's mesh entry ("TLSv1_2", ...) as meshlet names them: "1.2" for TLSv1_2 and
// below (meshlet speaks nothing below 1.2), "1.3" for TLSv1_3, "" for TLS_AUTO or nothing.
func MeshVersion(v string) (string, error) {
	switch v {
	case "", "TLS_AUTO":
		return "", nil
	case "TLSv1_0", "TLSv1_1", "TLSv1_2":
		return "1.2", nil
	case "TLSv1_3":
		return "1.3", nil
	}
	return "", fmt.Errorf("TLS version %q unknown", v)
}

// CipherSuites reads cipher suite names (IANA's, as Consul writes them, or OpenSSL's: ECDHE-ECDSA-AES128-GCM-SHA256)
// into Go's IDs of the secure TLS 1.2 suites; the names it does not know or that are insecure are returned apart.
func CipherSuites(names []string) (ids []uint16, unknown []string) {
	byName := map[string]uint16{}
	for _, s := range tls.CipherSuites() {
		byName[s.Name] = s.ID
		byName[opensslName(s.Name)] = s.ID
	}
	for _, n := range names {
		if id, ok := byName[n]; ok {
			ids = append(ids, id)
		} else {
			unknown = append(unknown, n)
		}
	}
	return ids, unknown
}

// opensslName is the OpenSSL name of an IANA TLS 1.2 ECDHE suite name (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 →
// ECDHE-ECDSA-AES128-GCM-SHA256), as Envoy's configuration names them.
func opensslName(iana string) string {
	s := strings.TrimPrefix(iana, "TLS_")
	s = strings.Replace(s, "_WITH_", "_", 1)
	r := strings.NewReplacer("AES_128", "AES128", "AES_256", "AES256", "CHACHA20_POLY1305", "CHACHA20-POLY1305")
	return strings.ReplaceAll(r.Replace(s), "_", "-")
}

// meshConfigs caches the *tls.Config of each MeshTLS seen, made from base.
type meshConfigs struct {
	mu   sync.Mutex
	byKV map[string]*tls.Config
}

func (mc *meshConfigs) get(base *tls.Config, fileMin uint16, m MeshTLS) *tls.Config {
	k := m.key()
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if c := mc.byKV[k]; c != nil {
		return c
	}
	c := base.Clone()
	m.apply(c, fileMin)
	if mc.byKV == nil || len(mc.byKV) > 16 {
		mc.byKV = map[string]*tls.Config{}
	}
	mc.byKV[k] = c
	return c
}
