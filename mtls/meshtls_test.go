package mtls

import (
	"crypto/tls"
	"sync/atomic"
	"testing"
)

// TestMeshTLS: what Consul's mesh entry says of TLS, applied at each handshake: the inbound minimum and maximum
// and the TLS 1.2 cipher suites, changed at run time; the outgoing settings on the client side.
func TestMeshTLS(t *testing.T) {
	td := "example.mesh"
	ca := testCA(t, td)
	apiCert, apiKey := testLeaf(t, ca, ServiceID(td, "", "", "api").String(), nil)
	webCert, webKey := testLeaf(t, ca, ServiceID(td, "", "", "web").String(), nil)
	api := staticSource{testBundle(t, apiCert, apiKey, testRoots(ca))}
	web := staticSource{testBundle(t, webCert, webKey, testRoots(ca))}
	var mesh atomic.Pointer[MeshTLS]
	mesh.Store(&MeshTLS{})
	scfg, err := InboundConfig(api, "1.3", func() MeshTLS { return *mesh.Load() })
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := testServer(t, scfg)
	client := func(m MeshTLS) *tls.Config {
		c, err := ClientConfigMesh(web, "1.2", m, "h2", nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	dial := func(m MeshTLS) (tls.ConnectionState, error) { return testDial(addr, client(m)) }

	if _, err := dial(MeshTLS{Max: "1.2"}); err == nil {
		t.Fatal("a TLS 1.2 client got in under the file's minimum 1.3")
	}
	if cs, err := dial(MeshTLS{}); err != nil || cs.Version != tls.VersionTLS13 {
		t.Fatalf("TLS 1.3: %v %x", err, cs.Version)
	}
	mesh.Store(&MeshTLS{Min: "1.2"})
	if cs, err := dial(MeshTLS{Max: "1.2"}); err != nil || cs.Version != tls.VersionTLS12 {
		t.Fatalf("TLS 1.2 client under the mesh's minimum 1.2: %v %x", err, cs.Version)
	}
	// The mesh's maximum 1.2 wins over the file's minimum 1.3; its cipher suites are the only ones offered.
	suites, unknown := CipherSuites([]string{"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_RSA_WITH_RC4_128_SHA", "bogus"})
	if len(suites) != 2 || len(unknown) != 2 {
		t.Fatalf("cipher suites %x, unknown %q", suites, unknown)
	}
	mesh.Store(&MeshTLS{Max: "1.2", CipherSuites: suites[:1]})
	cs, err := dial(MeshTLS{})
	if err != nil || cs.Version != tls.VersionTLS12 || cs.CipherSuite != tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 {
		t.Fatalf("under the mesh's maximum 1.2 and one suite: %v version %x suite %x", err, cs.Version, cs.CipherSuite)
	}
	if _, err := dial(MeshTLS{Max: "1.2", CipherSuites: suites[1:]}); err == nil {
		t.Fatal("a client with none of the server's suites got in")
	}
	mesh.Store(&MeshTLS{})
	if cs, err := dial(MeshTLS{}); err != nil || cs.Version != tls.VersionTLS13 {
		t.Fatalf("back to the file's: %v %x", err, cs.Version)
	}
	for _, tc := range []struct{ in, want string }{{"", ""}, {"TLS_AUTO", ""}, {"TLSv1_0", "1.2"}, {"TLSv1_2", "1.2"}, {"TLSv1_3", "1.3"}} {
		if got, err := MeshVersion(tc.in); err != nil || got != tc.want {
			t.Errorf("MeshVersion(%q) = %q, %v", tc.in, got, err)
		}
	}
	if _, err := MeshVersion("TLSv9"); err == nil {
		t.Error("an unknown version was read")
	}
}
