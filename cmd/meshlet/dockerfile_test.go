package main_test

// deploy/Dockerfile and /.dockerignore, read statically (no Docker daemon needed): a multi-arch build without
// emulation, version and OCI labels through build args, and a build context without bin/, .cache/ or .git.

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// dockerInstruction is one instruction of a Dockerfile: its keyword (upper case) and the rest, continuation
// lines joined.
type dockerInstruction struct {
	cmd, args string
	line      int
}

// dockerStage is the instructions from one FROM to the next.
type dockerStage struct {
	from  dockerInstruction
	instr []dockerInstruction
}

func parseDockerfile(t *testing.T, path string) []dockerStage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages []dockerStage
	var cur strings.Builder
	start := 0
	flush := func() {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return
		}
		cmd, args, _ := strings.Cut(s, " ")
		in := dockerInstruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			stages = append(stages, dockerStage{from: in})
			return
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Errorf("%s:%d: %s before the first FROM", path, in.line, in.cmd)
			}
			return
		}
		stages[len(stages)-1].instr = append(stages[len(stages)-1].instr, in)
	}
	for i, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue // a comment, also between continuation lines
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages
}

// args are the ARG names a stage declares (ARGs are scoped to their stage).
func (s dockerStage) args() map[string]string {
	m := map[string]string{}
	for _, in := range s.instr {
		if in.cmd == "ARG" {
			name, def, _ := strings.Cut(in.args, "=")
			m[name] = def
		}
	}
	return m
}

func TestDockerfile(t *testing.T) {
	const path = "../../deploy/Dockerfile"
	stages := parseDockerfile(t, path)
	if len(stages) != 2 {
		t.Fatalf("%d stages, want 2 (build, final)", len(stages))
	}
	build, final := stages[0], stages[1]

	// The build stage runs on the builder's platform and cross-compiles: no emulation for other architectures.
	if !regexp.MustCompile(`^--platform=\$(BUILDPLATFORM|\{BUILDPLATFORM\}) golang:\S+ AS build$`).MatchString(build.from.args) {
		t.Errorf("build stage: FROM %s; want FROM --platform=$BUILDPLATFORM golang:... AS build", build.from.args)
	}
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goLine == nil || !strings.Contains(build.from.args, "golang:"+string(goLine[1])) {
		t.Errorf("build stage: FROM %s; want the Go of go.mod (%s)", build.from.args, goLine)
	}
	ba := build.args()
	for _, a := range []string{"TARGETOS", "TARGETARCH", "VERSION"} {
		if _, ok := ba[a]; !ok {
			t.Errorf("build stage: no ARG %s", a)
		}
	}
	var goBuild string
	for _, in := range build.instr {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			goBuild = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "GOOS=${TARGETOS}", "GOARCH=${TARGETARCH}", "-trimpath",
		"-X main.version=${VERSION}", "./cmd/meshlet"} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("build stage: the go build lacks %q: %s", want, goBuild)
		}
	}

	// The final stage is per target platform (no --platform), runs nothing, and is labelled.
	if strings.Contains(final.from.args, "--platform") || !strings.HasPrefix(final.from.args, "gcr.io/distroless/static") {
		t.Errorf("final stage: FROM %s; want distroless/static for the target platform", final.from.args)
	}
	fa := final.args()
	labels := map[string]string{}
	labelRE := regexp.MustCompile(`([a-z0-9.]+)="([^"]*)"`)
	for _, in := range final.instr {
		switch in.cmd {
		case "RUN":
			t.Errorf("final stage, line %d: RUN would need emulation on a cross build", in.line)
		case "LABEL":
			for _, m := range labelRE.FindAllStringSubmatch(in.args, -1) {
				labels[m[1]] = m[2]
			}
		}
	}
	for key, want := range map[string]string{
		"org.opencontainers.image.version":  "${VERSION}",
		"org.opencontainers.image.revision": "${REVISION}",
		"org.opencontainers.image.source":   "${SOURCE}",
		"org.opencontainers.image.licenses": "${LICENSES}",
		"org.opencontainers.image.title":    "meshlet",
	} {
		if labels[key] != want {
			t.Errorf("final stage: LABEL %s=%q, want %q", key, labels[key], want)
		}
		if arg, ok := strings.CutPrefix(want, "${"); ok {
			if _, declared := fa[strings.TrimSuffix(arg, "}")]; !declared {
				t.Errorf("final stage: label %s uses %s, which the stage does not declare as ARG (ARGs are per stage)", key, want)
			}
		}
	}
	if fa["LICENSES"] != "Apache-2.0" || !strings.HasPrefix(fa["SOURCE"], "https://") {
		t.Errorf("final stage: ARG defaults LICENSES=%q SOURCE=%q", fa["LICENSES"], fa["SOURCE"])
	}
	joined := ""
	for _, in := range final.instr {
		joined += in.cmd + " " + in.args + "\n"
	}
	for _, want := range []string{"COPY --from=build /out/meshlet /meshlet", "USER 65532:65532", `ENTRYPOINT ["/meshlet"]`} {
		if !strings.Contains(joined, want) {
			t.Errorf("final stage lacks %q", want)
		}
	}

	// make image passes the version and the revision.
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-f deploy/Dockerfile", "--build-arg VERSION=$(VERSION)", "--build-arg REVISION=", "--platform $(PLATFORMS)"} {
		if !strings.Contains(string(mk), want) {
			t.Errorf("Makefile's image targets lack %q", want)
		}
	}
}

// TestDockerignore: the build context (the repository root) leaves out bin/, .cache/ and .git, and keeps every
// file the build needs: go.mod, go.sum and the directories of every package cmd/meshlet is built from.
func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf("exception %q: this test does not read exceptions", l)
		}
		patterns = append(patterns, strings.Trim(filepath.Clean(l), "/"))
	}
	ignored := func(path string) bool {
		parts := strings.Split(path, "/")
		for _, p := range patterns {
			for i := 1; i <= len(parts); i++ { // a pattern that matches a parent directory excludes its contents
				prefix := strings.Join(parts[:i], "/")
				if ok, _ := filepath.Match(p, prefix); ok {
					return true
				}
				if rest, ok := strings.CutPrefix(p, "**/"); ok {
					if m, _ := filepath.Match(rest, parts[i-1]); m {
						return true
					}
				}
			}
		}
		return false
	}
	for _, p := range []string{".git", ".git/HEAD", "bin/consul", ".cache/reqpath/x", "meshlet", "cmd/meshlet/meshlet.test"} {
		if !ignored(p) {
			t.Errorf("%s is in the build context", p)
		}
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "meshlet.dev/meshlet/cmd/meshlet").Output()
	if err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs("../..")
	keep := []string{"go.mod", "go.sum"}
	for _, dir := range strings.Fields(string(out)) {
		if rel, err := filepath.Rel(root, dir); err == nil && !strings.HasPrefix(rel, "..") {
			keep = append(keep, filepath.ToSlash(rel)+"/x.go")
		}
	}
	if len(keep) < 8 {
		t.Fatalf("only %d of meshlet's packages found: %v", len(keep), keep)
	}
	for _, p := range keep {
		if ignored(p) {
			t.Errorf("%s is left out of the build context, and the build needs it", p)
		}
	}
}
