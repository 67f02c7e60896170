package discovery

import (
	"context"
	"time"
)

// Chain is how the calls to one upstream service are routed, as a source compiles it (Consul: the discovery
// chain of service-router, service-splitter and service-resolver entries), flattened: the first route that
// matches a request picks it, a weighted split of the route picks one resolver, and the resolver's targets are
// tried in order (the first is the primary, the others its failover). A chain that says something meshlet cannot
// honour carries the reasons in Unsupported and is not applied at all.
type Chain struct {
	Service    string
	Datacenter string // where the chain was compiled: the upstream's own datacenter
	Protocol   string
	// Default: nothing configures the chain (no router, splitter or resolver of its own): the upstream's plain
	// endpoints, as without a chain.
	Default bool
	Routes  []Route
	// Unsupported lists what meshlet cannot honour; a chain with any is refused whole (never half-applied).
	Unsupported []string
	Index       uint64 // the source's version of the chain
}

// Route is one route of a chain. A nil Match matches every request.
type Route struct {
	Match           *RouteMatch
	PrefixRewrite   string
	RequestTimeout  time.Duration  // 0: the resolver's, else the upstream's
	IdleTimeout     time.Duration  // 0: the upstream's stream_idle_timeout
	Retry           *RouteSettings // the route's retries (MaxAttempts, RetryOn); nil: the upstream's settings
	RequestHeaders  HeaderMods
	ResponseHeaders HeaderMods
	Splits          []Split // at least one; weights sum to 100
}

// RouteMatch is what a request must have for a route to take it: every part set must match.
type RouteMatch struct {
	PathExact, PathPrefix, PathRegex string
	CaseInsensitive                  bool // for the path
	Headers                          []HeaderMatch
	Query                            []QueryMatch
	Methods                          []string
}

// HeaderMatch matches one header: Present, or one of Exact, Prefix, Suffix, Regex (a full match); Invert turns
// the result around.
type HeaderMatch struct {
	Name                         string
	Present                      bool
	Exact, Prefix, Suffix, Regex string
	Invert                       bool
}

// QueryMatch matches one query parameter: Present, or Exact, or Regex (a full match).
type QueryMatch struct {
	Name         string
	Present      bool
	Exact, Regex string
}

// HeaderMods change headers: Add appends a value, Set replaces every value, Remove deletes.
type HeaderMods struct {
	Add, Set map[string]string
	Remove   []string
}

// Empty reports whether m changes nothing.
func (m HeaderMods) Empty() bool { return len(m.Add) == 0 && len(m.Set) == 0 && len(m.Remove) == 0 }

// Split is one weighted branch of a route, ending at a resolver.
type Split struct {
	Weight          float64 // percent
	RequestHeaders  HeaderMods
	ResponseHeaders HeaderMods
	Resolver        Resolver
}

// Resolver picks the instances of a branch: its targets in order (primary, then failover).
type Resolver struct {
	Targets        []Target
	ConnectTimeout time.Duration // 0: the upstream's
	RequestTimeout time.Duration // 0: the upstream's
	LB             string        // "" (the upstream's), round_robin, least_request, random, ring_hash, maglev
	// Hash are the hash policies of ring_hash and maglev, in order; RingSize is ring_hash's minimum ring size
	// (0: 1024).
	Hash     []HashPolicy
	RingSize uint64
}

// HashPolicy is one input of a request's hash: a header, a cookie or a query parameter (Field, with its name in
// FieldValue), or the client's address (SourceIP). A Terminal policy that yields a value ends the computation.
type HashPolicy struct {
	Field, FieldValue string
	SourceIP          bool
	Terminal          bool
}

// Target is one set of instances: a service (in a datacenter), narrowed by a subset's filter.
type Target struct {
	ID         string // the source's name of the target; equal IDs are the same instances
	Service    string
	Subset     string // the subset's name ("" for the whole service)
	Datacenter string // "" for the source's default
	Filter     string // the subset's filter expression, in the source's language
}

// ChainSource is a Source that can also compile how calls to a service are routed.
type ChainSource interface {
	Source
	// WatchChain sends the service's chain as soon as it is known and again on every change, until ctx ends
	// (then the channel closes). A receiver that falls behind misses only intermediate chains.
	WatchChain(ctx context.Context, service string) (<-chan Chain, error)
}
