package inject

import "strconv"

// The injected container, as the subset of the Kubernetes core/v1 Container schema it uses; field order is the
// order in the output. JSON tags serve the admission webhook's patch.
type (
	container struct {
		Name            string          `yaml:"name" json:"name"`
		Image           string          `yaml:"image" json:"image"`
		ImagePullPolicy string          `yaml:"imagePullPolicy,omitempty" json:"imagePullPolicy,omitempty"`
		Args            []string        `yaml:"args" json:"args"`
		Env             []envVar        `yaml:"env" json:"env"`
		Ports           []containerPort `yaml:"ports" json:"ports"`
		RestartPolicy   string          `yaml:"restartPolicy,omitempty" json:"restartPolicy,omitempty"`
		StartupProbe    probe           `yaml:"startupProbe" json:"startupProbe"`
		ReadinessProbe  probe           `yaml:"readinessProbe" json:"readinessProbe"`
		LivenessProbe   probe           `yaml:"livenessProbe" json:"livenessProbe"`
		Lifecycle       *lifecycle      `yaml:"lifecycle,omitempty" json:"lifecycle,omitempty"`
		VolumeMounts    []volumeMount   `yaml:"volumeMounts,omitempty" json:"volumeMounts,omitempty"`
		Resources       resources       `yaml:"resources" json:"resources"`
		SecurityContext securityContext `yaml:"securityContext" json:"securityContext"`
	}
	// initContainerSpec is the init container of transparent interception (meshlet-init).
	initContainerSpec struct {
		Name            string          `yaml:"name" json:"name"`
		Image           string          `yaml:"image" json:"image"`
		ImagePullPolicy string          `yaml:"imagePullPolicy,omitempty" json:"imagePullPolicy,omitempty"`
		Args            []string        `yaml:"args" json:"args"`
		Resources       resources       `yaml:"resources" json:"resources"`
		SecurityContext securityContext `yaml:"securityContext" json:"securityContext"`
	}
	envVar struct {
		Name      string     `yaml:"name" json:"name"`
		Value     string     `yaml:"value,omitempty" json:"value,omitempty"`
		ValueFrom *valueFrom `yaml:"valueFrom,omitempty" json:"valueFrom,omitempty"`
	}
	valueFrom struct {
		FieldRef struct {
			FieldPath string `yaml:"fieldPath" json:"fieldPath"`
		} `yaml:"fieldRef" json:"fieldRef"`
	}
	volumeMount struct {
		Name      string `yaml:"name" json:"name"`
		MountPath string `yaml:"mountPath" json:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly" json:"readOnly"`
	}
	containerPort struct {
		Name          string `yaml:"name" json:"name"`
		ContainerPort int    `yaml:"containerPort" json:"containerPort"`
		Protocol      string `yaml:"protocol" json:"protocol"`
	}
	probe struct {
		HTTPGet struct {
			Path string `yaml:"path" json:"path"`
			Port string `yaml:"port" json:"port"`
		} `yaml:"httpGet" json:"httpGet"`
		PeriodSeconds    int `yaml:"periodSeconds" json:"periodSeconds"`
		TimeoutSeconds   int `yaml:"timeoutSeconds" json:"timeoutSeconds"`
		FailureThreshold int `yaml:"failureThreshold" json:"failureThreshold"`
	}
	lifecycle struct {
		PostStart struct {
			Exec struct {
				Command []string `yaml:"command" json:"command"`
			} `yaml:"exec" json:"exec"`
		} `yaml:"postStart" json:"postStart"`
	}
	resources struct {
		Requests map[string]string `yaml:"requests" json:"requests"`
		Limits   map[string]string `yaml:"limits" json:"limits"`
	}
	securityContext struct {
		AllowPrivilegeEscalation bool  `yaml:"allowPrivilegeEscalation" json:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem" json:"readOnlyRootFilesystem"`
		RunAsNonRoot             bool  `yaml:"runAsNonRoot" json:"runAsNonRoot"`
		RunAsUser                int64 `yaml:"runAsUser" json:"runAsUser"`
		RunAsGroup               int64 `yaml:"runAsGroup" json:"runAsGroup"`
		Capabilities             struct {
			Add  []string `yaml:"add,omitempty" json:"add,omitempty"`
			Drop []string `yaml:"drop" json:"drop"`
		} `yaml:"capabilities" json:"capabilities"`
		SeccompProfile struct {
			Type string `yaml:"type" json:"type"`
		} `yaml:"seccompProfile" json:"seccompProfile"`
	}
)

// Port names of the injected container: Prometheus (PodMonitor, the pod scrape config) finds the admin port by
// its name.
const (
	PortAdmin   = "meshlet-admin"
	PortInbound = "meshlet-inbound"
)

// sidecar builds the meshlet container of one pod.
func sidecar(p podParams, cfg Config) (*container, error) {
	conf, err := p.render(cfg)
	if err != nil {
		return nil, err
	}
	fieldEnv := func(name, path string) envVar {
		e := envVar{Name: name, ValueFrom: &valueFrom{}}
		e.ValueFrom.FieldRef.FieldPath = path
		return e
	}
	c := &container{
		Name:            ContainerName,
		Image:           cfg.Image,
		ImagePullPolicy: cfg.ImagePullPolicy,
		Args:            []string{"run", "-config", "env:" + ConfigEnv},
		Env: []envVar{ // order matters: $(VAR) expands only variables defined above it
			fieldEnv("POD_IP", "status.podIP"),
			fieldEnv("HOST_IP", "status.hostIP"),
			{Name: "CONSUL_HTTP_ADDR", Value: p.consul},
			// The admin listener on the pod IP: the kubelet probes it, Prometheus scrapes it, and the Consul agent on
			// the node checks /ready there. `meshlet wait` reads it too.
			{Name: "MESHLET_ADMIN_LISTEN", Value: "$(POD_IP):" + strconv.Itoa(cfg.AdminPort)},
		},
		Ports: []containerPort{{Name: PortAdmin, ContainerPort: cfg.AdminPort, Protocol: "TCP"}},
		// Start-up: ready as soon as it can route (checked every second for up to 2 minutes).
		StartupProbe:   httpProbe("/ready", 1, 120),
		ReadinessProbe: httpProbe("/ready", 5, 2),
		LivenessProbe:  httpProbe("/live", 10, 3),
		Resources: resources{
			Requests: map[string]string{"cpu": p.cpuRequest, "memory": p.memoryRequest},
			Limits:   map[string]string{"memory": p.memoryLimit},
		},
	}
	if p.cpuLimit != "" {
		c.Resources.Limits["cpu"] = p.cpuLimit
	}
	if p.goMemLimit != "" {
		// 90% of the memory limit: the Go runtime collects harder near it instead of the container being
		// OOM-killed. A literal value: the downward API (resourceFieldRef limits.memory) gives the whole limit,
		// and Kubernetes cannot compute 90% of it.
		c.Env = append(c.Env, envVar{Name: "GOMEMLIMIT", Value: p.goMemLimit})
	}
	c.Env = append(c.Env, envVar{Name: ConfigEnv, Value: conf})
	if p.appPort != 0 {
		c.Ports = append(c.Ports, containerPort{Name: PortInbound, ContainerPort: p.inboundPort, Protocol: "TCP"})
	}
	if p.tlsSecret != "" {
		c.VolumeMounts = []volumeMount{{Name: TLSVolume, MountPath: TLSDir, ReadOnly: true}}
	}
	if p.native {
		c.RestartPolicy = "Always" // a native sidecar: starts before the app containers, stops after them
	} else {
		// Classic: the kubelet starts the next container only once this hook returns, i.e. once meshlet is ready.
		c.Lifecycle = &lifecycle{}
		c.Lifecycle.PostStart.Exec.Command = []string{"/meshlet", "wait", "-timeout", "2m"} // -admin: $MESHLET_ADMIN_LISTEN
	}
	sc := &c.SecurityContext
	sc.ReadOnlyRootFilesystem, sc.RunAsNonRoot = true, true
	sc.RunAsUser, sc.RunAsGroup = cfg.RunAsUser, cfg.RunAsUser
	if p.transparent != nil { // the UID whose connections redirect-traffic leaves alone
		sc.RunAsUser, sc.RunAsGroup = p.transparent.proxyUID, p.transparent.proxyUID
	}
	sc.Capabilities.Drop = []string{"ALL"}
	sc.SeccompProfile.Type = "RuntimeDefault"
	return c, nil
}

func httpProbe(path string, period, failures int) probe {
	var p probe
	p.HTTPGet.Path, p.HTTPGet.Port = path, PortAdmin
	p.PeriodSeconds, p.TimeoutSeconds, p.FailureThreshold = period, 1, failures
	return p
}
