package main

// The names `meshlet certs` puts into file names and SPIFFE IDs (spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<name>),
// checked before anything is written: a name with a slash or a dot segment would write outside -dir or mint an
// identity with a different path than the one asked for.

import (
	"fmt"
	"regexp"
	"sync"
)

var (
	// certServiceName is a service name as service.name accepts it: a lowercase DNS label.
	certServiceName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`) })
	// certDatacenter is a Consul datacenter name (lowercase letters, digits, hyphens, underscores): one SPIFFE
	// path segment.
	certDatacenter = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9_-]{1,63}$`) })
	// certTrustDomain is a SPIFFE trust domain: lowercase letters, digits, hyphens, underscores, in labels
	// separated by single dots; no port, no userinfo, no path.
	certTrustDomain = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9_-]+(\.[a-z0-9_-]+)*$`) })
)

// checkCertNames checks every name given (an empty string is not checked: the flag was not given) and returns
// the first problem, naming its flag.
func checkCertNames(trustDomain, namespace, datacenter, service string) error {
	switch {
	case trustDomain != "" && (len(trustDomain) > 255 || !certTrustDomain().MatchString(trustDomain)):
		return fmt.Errorf("-trust-domain %q must be a SPIFFE trust domain: lowercase letters, digits, '-', '_' in labels separated by dots (e.g. example.mesh)", trustDomain)
	case namespace != "" && !certServiceName().MatchString(namespace):
		return fmt.Errorf("-namespace %q must be a lowercase DNS label (a-z, 0-9, '-'; at most 63)", namespace)
	case datacenter != "" && !certDatacenter().MatchString(datacenter):
		return fmt.Errorf("-datacenter %q must be a datacenter name (a-z, 0-9, '-', '_'; at most 63)", datacenter)
	case service != "" && !certServiceName().MatchString(service):
		return fmt.Errorf("-service %q must be a lowercase DNS label (a-z, 0-9, '-'; at most 63), as service.name is", service)
	}
	return nil
}
