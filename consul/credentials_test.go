package consul

import (
	"strings"
	"testing"
)

// TestConsulAddressCredentialsRefused: an address with userinfo is refused by Validate, and the error does not
// repeat the credentials.
func TestConsulAddressCredentialsRefused(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:8500", true},
		{"https://consul.example:8501", true},
		{"unix:///run/consul.sock", true},
		{"http://user:pw-s3cr3t@127.0.0.1:8500", false},
		{"https://pw-s3cr3t@consul.example:8501/", false},
		{"user:pw-s3cr3t@127.0.0.1:8500", false},
	} {
		c := Config{Address: tt.addr}
		c.SetDefaults()
		err := c.Validate("discovery.consul")
		if tt.ok != (err == nil) {
			t.Errorf("%s: %v, want ok %v", tt.addr, err, tt.ok)
			continue
		}
		if err != nil && (!strings.Contains(err.Error(), "discovery.consul.address: must not hold credentials") || strings.Contains(err.Error(), "s3cr3t")) {
			t.Errorf("%s: %v", tt.addr, err)
		}
	}
}
