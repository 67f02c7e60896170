package proxy

// Consistent hashing (a discovery chain resolver's ring_hash and maglev): a request's key (from its hash
// policies) picks an endpoint that stays the same while the set is stable; when an endpoint joins or leaves,
// about 1/N of the keys move. The endpoint hashes are FNV-1a of the endpoint ID, mixed, so that every meshlet maps
// a key to the same endpoint.

import (
	"hash/fnv"
	"net"
	"net/http"
	"slices"
	"strconv"

	"meshlet.dev/meshlet/discovery"
)

// Load-balancing policies of discovery chains (not accepted in the config file's lb).
const (
	LBRingHash = "ring_hash"
	LBMaglev   = "maglev"
)

// hashTable maps a key to an endpoint index; alt is the i-th alternative (0: the key's own endpoint).
type hashTable interface {
	lookup(key uint64, alt int) int
}

// hash64 is FNV-1a of s, mixed (splitmix64's finalizer) so that nearby inputs spread over the whole range.
func hash64(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return mix64(h.Sum64())
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// ring is a ring hash: each endpoint at replicas points of the ring; a key goes to the first point at or after it.
// The number of points per endpoint depends on the ring size only, never on how many endpoints there are (as
// Envoy's does): an endpoint that joins or leaves then moves only the keys of its own points, about 1/N.
type ring struct {
	points []uint64
	owner  []int32
}

// DefaultRingSize is ring_hash's minimum ring size when the resolver sets none (Envoy's default).
const DefaultRingSize = 1024

func newRing(ids []string, size uint64) *ring {
	if size == 0 {
		size = DefaultRingSize
	}
	replicas := int(min(max(size/4, 64), 4096)) // a ring of MinimumRingSize points from 4 endpoints on
	type point struct {
		h   uint64
		idx int32
	}
	pts := make([]point, 0, replicas*len(ids))
	for i, id := range ids {
		for r := range replicas {
			pts = append(pts, point{hash64(id + "_" + strconv.Itoa(r)), int32(i)})
		}
	}
	slices.SortFunc(pts, func(a, b point) int {
		if a.h != b.h {
			if a.h < b.h {
				return -1
			}
			return 1
		}
		return int(a.idx - b.idx)
	})
	r := &ring{points: make([]uint64, len(pts)), owner: make([]int32, len(pts))}
	for i, p := range pts {
		r.points[i], r.owner[i] = p.h, p.idx
	}
	return r
}

func (r *ring) lookup(key uint64, alt int) int {
	i, _ := slices.BinarySearch(r.points, key)
	// The alt-th point after the key's that belongs to another endpoint than the ones before it.
	seen := 0
	last := int32(-1)
	for j := 0; j < len(r.points); j++ {
		o := r.owner[(i+j)%len(r.points)]
		if o == last {
			continue
		}
		if seen == alt {
			return int(o)
		}
		seen++
		last = o
	}
	return int(r.owner[i%len(r.points)])
}

// maglev is Maglev's lookup table (Eisenbud et al., 2016) over the endpoints, of a prime size at least 100 per
// endpoint.
type maglev struct{ table []int32 }

var maglevSizes = []int{251, 1021, 4093, 16381, 65521, 262139}

func newMaglev(ids []string) *maglev {
	n := len(ids)
	m := maglevSizes[len(maglevSizes)-1]
	for _, s := range maglevSizes {
		if s >= 100*n {
			m = s
			break
		}
	}
	offset, skip := make([]int, n), make([]int, n)
	for i, id := range ids {
		offset[i] = int(hash64(id+"#offset") % uint64(m))
		skip[i] = int(hash64(id+"#skip")%uint64(m-1)) + 1
	}
	table := make([]int32, m)
	for i := range table {
		table[i] = -1
	}
	next := make([]int, n)
	filled := 0
	for filled < m {
		for i := range n {
			c := (offset[i] + next[i]*skip[i]) % m
			for table[c] >= 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % m
			}
			table[c] = int32(i)
			next[i]++
			if filled++; filled == m {
				break
			}
		}
	}
	return &maglev{table: table}
}

func (t *maglev) lookup(key uint64, alt int) int {
	return int(t.table[(key+uint64(alt)*2654435761)%uint64(len(t.table))])
}

// newHashTable builds the table of policy lb over eps, ordered by endpoint ID.
func newHashTable(lb string, eps []*endpointState, ringSize uint64) hashTable {
	ids := make([]string, len(eps))
	for i, e := range eps {
		ids[i] = e.ep.ID
	}
	if lb == LBMaglev {
		return newMaglev(ids)
	}
	return newRing(ids, ringSize)
}

// requestHash computes a request's key from hash policies, as Envoy does: each policy that yields a value is
// mixed in; a Terminal one that yields a value ends it. false: no policy yielded one (the pick is random).
func requestHash(r *http.Request, policies []discovery.HashPolicy) (uint64, bool) {
	var key uint64
	found := false
	for _, p := range policies {
		v, ok := "", false
		switch {
		case p.SourceIP:
			if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
				v, ok = host, true
			}
		case p.Field == "header":
			if vals := r.Header.Values(p.FieldValue); len(vals) > 0 {
				v, ok = vals[0], true
			}
		case p.Field == "cookie":
			if c, err := r.Cookie(p.FieldValue); err == nil {
				v, ok = c.Value, true
			}
		case p.Field == "query_parameter":
			if q := r.URL.Query(); q.Has(p.FieldValue) {
				v, ok = q.Get(p.FieldValue), true
			}
		}
		if !ok {
			continue
		}
		key = mix64(key*31 + hash64(v))
		found = true
		if p.Terminal {
			break
		}
	}
	return key, found
}
