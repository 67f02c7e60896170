package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// yamlLine is a YAML decoder message: its line and the rest.
var yamlLine = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^line (\d+): (.*)$`) })

// yamlCannot is a type error of the YAML decoder: the YAML tag, the value and the Go type it could not fill.
var yamlCannot = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile("^cannot unmarshal (!!\\S+) `(.*)` into (\\S+)$") })

// typeErrors rewrites the messages of a yaml.TypeError with the field path of each ("upstreams[0].timeout: 5 must
// be a duration such as 5s (line 10)"), found in data's node tree by line.
func typeErrors(data []byte, msgs []string) []string {
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root) // it decoded as far as the type error: the tree is there
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m
		lm := yamlLine().FindStringSubmatch(m)
		if lm == nil {
			continue
		}
		line, _ := strconv.Atoi(lm[1])
		switch {
		case yamlNotFound().MatchString(lm[2]):
			field := yamlNotFound().FindStringSubmatch(lm[2])[1]
			path := pathAtLine(&root, "", func(k, _ *yaml.Node) bool { return k.Line == line && k.Value == field })
			if path == "" {
				path = field
			}
			out[i] = fmt.Sprintf("%s: unknown field (line %d)", path, line)
		case yamlCannot().MatchString(lm[2]):
			c := yamlCannot().FindStringSubmatch(lm[2])
			path := pathAtLine(&root, "", func(_, v *yaml.Node) bool { return v.Line == line && v.Value == c[2] })
			if path == "" {
				path = pathAtLine(&root, "", func(_, v *yaml.Node) bool { return v.Line == line })
			}
			if path == "" {
				path = "line " + lm[1]
			}
			out[i] = fmt.Sprintf("%s: %s %s (line %d)", path, c[2], wantType(c[3]), line)
		}
	}
	return out
}

// wantType says what a Go type of the config takes.
func wantType(goType string) string {
	switch strings.TrimPrefix(goType, "*") {
	case "time.Duration":
		return "must be a duration such as 5s"
	case "int", "int64", "uint16", "uint32", "uint64":
		return "must be a whole number"
	case "float64":
		return "must be a number"
	case "bool":
		return "must be true or false"
	case "string":
		return "must be a string"
	}
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "must be a list"
	case strings.HasPrefix(goType, "map["):
		return "must be a mapping"
	}
	return "cannot be read as " + goType
}

// pathAtLine returns the field path (upstreams[0].timeout) of the deepest mapping entry or list item of n that
// match takes (k is nil for a list item), or "".
func pathAtLine(n *yaml.Node, prefix string, match func(k, v *yaml.Node) bool) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if p := pathAtLine(c, prefix, match); p != "" {
				return p
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if prefix != "" {
				p = prefix + "." + k.Value
			}
			if deeper := pathAtLine(v, p, match); deeper != "" {
				return deeper
			}
			if match(k, v) {
				return p
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", prefix, i)
			if deeper := pathAtLine(c, p, match); deeper != "" {
				return deeper
			}
			if c.Kind == yaml.ScalarNode && match(&yaml.Node{Line: -1}, c) {
				return p
			}
		}
	}
	return ""
}

// perLine prefixes each line of err's message with the file's path.
func perLine(path string, err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = path + ": " + l
	}
	return fmt.Errorf("%s", strings.Join(lines, "\n"))
}
