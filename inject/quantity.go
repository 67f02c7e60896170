package inject

import (
	"fmt"
	"math/big"
	"regexp"
	"sync"
)

// Kubernetes resource quantities (k8s.io/apimachinery's resource.Quantity), read without linking that module into
// the binary: a decimal number with an optional sign and fraction, then a binary suffix (Ki Mi Gi Ti Pi Ei), a
// decimal one (n u m k M G T P E, or none) or a decimal exponent (e3, E-2).
var quantityRE = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$`)
})

var quantitySuffixes = sync.OnceValue(func() map[string]*big.Rat {
	return map[string]*big.Rat{
		"": big.NewRat(1, 1), "n": big.NewRat(1, 1e9), "u": big.NewRat(1, 1e6), "m": big.NewRat(1, 1e3),
		"k": big.NewRat(1e3, 1), "M": big.NewRat(1e6, 1), "G": big.NewRat(1e9, 1), "T": big.NewRat(1e12, 1),
		"P": big.NewRat(1e15, 1), "E": big.NewRat(1e18, 1),
		"Ki": big.NewRat(1<<10, 1), "Mi": big.NewRat(1<<20, 1), "Gi": big.NewRat(1<<30, 1), "Ti": big.NewRat(1<<40, 1),
		"Pi": big.NewRat(1<<50, 1), "Ei": big.NewRat(1<<60, 1),
	}
})

// parseQuantity returns the value of a Kubernetes quantity ("128Mi", "250m", "1.5G", "2e9"); it must be positive.
func parseQuantity(s string) (*big.Rat, error) {
	m := quantityRE().FindStringSubmatch(s)
	if m == nil || len(s) > 64 {
		return nil, fmt.Errorf("%q must be a Kubernetes quantity such as 128Mi, 1Gi, 250m or 0.5", s)
	}
	v, ok := new(big.Rat).SetString(m[2])
	if !ok {
		return nil, fmt.Errorf("%q must be a Kubernetes quantity such as 128Mi, 1Gi, 250m or 0.5", s)
	}
	if mul, ok := quantitySuffixes()[m[3]]; ok {
		v.Mul(v, mul)
	} else { // e or E with a decimal exponent
		var exp int
		fmt.Sscanf(m[3][1:], "%d", &exp)
		if exp > 30 || exp < -30 {
			return nil, fmt.Errorf("%q: exponent out of range", s)
		}
		p := new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(abs(exp))), nil))
		if exp < 0 {
			p.Inv(p)
		}
		v.Mul(v, p)
	}
	if m[1] == "-" {
		v.Neg(v)
	}
	if v.Sign() <= 0 {
		return nil, fmt.Errorf("%q must be more than 0", s)
	}
	return v, nil
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// goMemLimit is GOMEMLIMIT for a container whose memory limit is limit bytes: 90% of it, so that the Go runtime
// collects harder as the heap nears the limit instead of being OOM-killed. In whole MiB (rounded down) from 16 MiB
// up, in bytes below.
func goMemLimit(limit *big.Rat) string {
	v := new(big.Rat).Mul(limit, big.NewRat(9, 10))
	b := new(big.Int).Quo(v.Num(), v.Denom()) // floor: the value is positive
	if mib := new(big.Int).Rsh(b, 20); mib.Cmp(big.NewInt(16)) >= 0 {
		return mib.String() + "MiB"
	}
	if b.Sign() == 0 {
		b.SetInt64(1)
	}
	return b.String()
}
