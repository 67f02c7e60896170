package inject

// YAML documents are read the way kubectl reads them (sigs.k8s.io/yaml, on go.yaml.in/yaml/v2): aliases stand for
// what their anchor holds, merge keys (<<: *base, <<: [*a, *b]) bring in the keys of other maps, and a key given
// twice keeps its last value. Injection works on the node tree, which keeps all three as written; a pod whose
// annotations, containers or spec come through an alias or a merge would otherwise be read wrongly (an opt-out not
// seen, the app's containers dropped by a `containers` key added next to a merge). Such a document is resolved
// first into a plain tree with the same meaning, and re-encoded without anchors if injection changes it.

import (
	"errors"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// maxResolvedNodes bounds the tree that resolving aliases may build (a billion-laughs document expands
// exponentially); kubectl's decoder refuses excessive aliasing too.
const maxResolvedNodes = 200_000

var errTooManyAliases = fmt.Errorf("the document expands to more than %d nodes through its aliases", maxResolvedNodes)

// needsResolve reports whether n holds an alias, a merge key or a mapping with a key given twice.
func needsResolve(n *yaml.Node) bool {
	switch n.Kind {
	case yaml.AliasNode:
		return true
	case yaml.MappingNode:
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if isMergeKey(k) || k.Kind != yaml.ScalarNode {
				return true
			}
			if seen[k.Value] {
				return true
			}
			seen[k.Value] = true
		}
	}
	for _, c := range n.Content {
		if needsResolve(c) {
			return true
		}
	}
	return false
}

// isMergeKey is a plain << key (a quoted "<<" is an ordinary string).
func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && k.Tag == "!!merge"
}

// resolver builds resolved copies of nodes and counts them against maxResolvedNodes.
type resolver struct{ nodes int }

// resolve returns a copy of n with aliases replaced by copies of their anchors' nodes, merge keys applied and
// duplicate keys collapsed, as sigs.k8s.io/yaml reads them: in a mapping, keys and merges apply in the order
// written, each setting the keys it brings (so a key after a merge wins over it, and a merge after a key wins
// over that key); a merged sequence of maps applies its last map first (the first wins); a key's last value wins
// and keeps the place of its first. Copies carry no anchors.
func (r *resolver) resolve(n *yaml.Node) (*yaml.Node, error) {
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return nil, errors.New("an alias without its anchor")
		}
		n = n.Alias
	}
	if r.nodes++; r.nodes > maxResolvedNodes {
		return nil, errTooManyAliases
	}
	out := *n
	out.Anchor, out.Content = "", nil
	if n.Kind != yaml.MappingNode {
		for _, c := range n.Content {
			rc, err := r.resolve(c)
			if err != nil {
				return nil, err
			}
			out.Content = append(out.Content, rc)
		}
		return &out, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if isMergeKey(n.Content[i]) {
			if err := r.merge(&out, n.Content[i+1]); err != nil {
				return nil, err
			}
			continue
		}
		k, err := r.resolve(n.Content[i])
		if err != nil {
			return nil, err
		}
		v, err := r.resolve(n.Content[i+1])
		if err != nil {
			return nil, err
		}
		setPair(&out, k, v)
	}
	return &out, nil
}

// merge applies the value of a merge key to the mapping out: a mapping, or a sequence of mappings (aliases to
// them included).
func (r *resolver) merge(out *yaml.Node, v *yaml.Node) error {
	items := []*yaml.Node{v}
	if deref(v).Kind == yaml.SequenceNode {
		items = nil
		seq := deref(v).Content
		for i := len(seq) - 1; i >= 0; i-- { // earlier maps take precedence: applied last
			items = append(items, seq[i])
		}
	}
	for _, it := range items {
		if deref(it).Kind != yaml.MappingNode {
			return fmt.Errorf("line %d: a merge key (<<) needs a map or a sequence of maps", v.Line)
		}
		m, err := r.resolve(it)
		if err != nil {
			return err
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			setPair(out, m.Content[i], m.Content[i+1])
		}
	}
	return nil
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// setPair sets key k to v in mapping m: in place of an equal scalar key, else appended.
func setPair(m *yaml.Node, k, v *yaml.Node) {
	if k.Kind == yaml.ScalarNode {
		for i := 0; i+1 < len(m.Content); i += 2 {
			if ek := m.Content[i]; ek.Kind == yaml.ScalarNode && ek.Value == k.Value {
				m.Content[i+1] = v
				return
			}
		}
	}
	m.Content = append(m.Content, k, v)
}
