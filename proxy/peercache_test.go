package proxy

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"

	"meshlet.dev/meshlet/mtls"
)

// TestPeerCache: each lookup answers for the certificate it was given, whether its slot holds it, held another,
// or is taken by another between lookups (more certificates than slots, from many goroutines); the copies of one
// connection's state share an entry; a certificate without a valid SPIFFE ID has none.
func TestPeerCache(t *testing.T) {
	pki := newTestPKI(t)
	const n = peerCacheSlots * 3
	certs := make([]*x509.Certificate, n)
	for i := range certs {
		cert, _, err := pki.ca.Issue(mtls.ServiceID(testTrustDomain, "", "", fmt.Sprintf("svc-%d", i)),
			time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		certs[i] = cert
	}
	pc := newPeerCache()
	check := func(i int) error {
		// A fresh copy of the state each time, as requests carry them; the certificate is the same object.
		state := tls.ConnectionState{PeerCertificates: []*x509.Certificate{certs[i]}}
		e := pc.of(&state)
		sum := sha256.Sum256(certs[i].Raw)
		want := mtls.ServiceID(testTrustDomain, "", "", fmt.Sprintf("svc-%d", i))
		if e == nil || !e.ok || e.cert != certs[i] || e.id != want || e.uri != want.String() || e.hash != hex.EncodeToString(sum[:]) {
			return fmt.Errorf("certificate %d: got %+v, want id %s", i, e, want)
		}
		return nil
	}
	for i := range certs {
		if err := check(i); err != nil {
			t.Fatal(err)
		}
	}
	state := tls.ConnectionState{PeerCertificates: []*x509.Certificate{certs[0]}}
	copied := state
	if a, b := pc.of(&state), pc.of(&copied); a != b {
		t.Errorf("two copies of one connection state got two entries")
	}

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for k := range 2000 {
				if err := check((g*131 + k*7) % n); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	if e := pc.of(nil); e != nil {
		t.Errorf("no state: %+v", e)
	}
	if e := pc.of(&tls.ConnectionState{}); e != nil {
		t.Errorf("no certificate: %+v", e)
	}
	noID := &x509.Certificate{Raw: []byte("not an SVID")}
	if e := pc.of(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{noID}}); e == nil || e.ok {
		t.Errorf("a certificate without a SPIFFE ID: %+v", e)
	}
}
