//! deploy/ agrees with the collector it deploys.
//!
//! No cluster is needed: every YAML file under deploy/ is parsed (all documents), kustomize's
//! build is followed from the kustomization files (resources, generators, namespace, images),
//! and the result is checked against the collector itself: the StatefulSet's arguments are
//! parsed by the collector's own CLI definition and listed by `meshaudit serve --help`, the
//! ConfigMap's TOML goes through `ServeConfig::resolve` (the function `main` calls), ports and
//! probes are matched against the addresses it yields, and the real binary is started on that
//! file to answer every HTTP path the manifests point at. The Istio files are checked against
//! the Service (extension providers), each other (Telemetry, PeerAuthentication) and Entra's
//! issuer rules. Where `kubectl` is installed, `kubectl kustomize` renders every kustomization
//! and the render is compared with the model built here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use meshaudit::config::{ServeConfig, ServeOptions};
use serde::Deserialize;
use serde_json::{json, Value};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// Directories whose files are merged into an Istio installation by hand (mesh config is not a
/// Kubernetes object), so no kustomization lists them.
const MESH_CONFIG_DIR: &str = "istio/mesh-config";

/// Headers whose values are secrets: never asked of Envoy (docs/audit-record.md, "Redaction").
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Kinds that have no namespace (kustomize's namespace setting leaves them alone).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
];

/// Top-level kustomization keys this test knows how to follow. A new key (replacements, crds,
/// ...) may reference files: teach `build` about it before using it.
const KUSTOMIZATION_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "components",
    "patches",
    "configMapGenerator",
    "generatorOptions",
    "images",
];

// ---------------------------------------------------------------------------------------------
// Reading YAML.

fn deploy() -> PathBuf {
    PathBuf::from(DEPLOY)
}

fn rel(p: &Path) -> String {
    p.strip_prefix(DEPLOY)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

fn is_yaml(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// Every non-empty document of a YAML file, as JSON values. Kubernetes objects are JSON, so a
/// document without a JSON form is refused here as kubectl refuses it: kustomize fails on an
/// integer map key (`portLevelMtls: {9001: ...}`), which YAML allows and serde would quietly
/// turn into a string.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", rel(path)));
    serde_norway::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, doc)| {
            let what = format!("{}: document {}", rel(path), i + 1);
            let yaml =
                serde_norway::Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}"));
            require_string_keys(&yaml, &what);
            serde_json::to_value(&yaml).unwrap_or_else(|e| panic!("{what}: no JSON form: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn require_string_keys(v: &serde_norway::Value, what: &str) {
    use serde_norway::Value as Y;
    match v {
        Y::Mapping(m) => {
            for (k, x) in m {
                assert!(
                    k.is_string(),
                    "{what}: map key {k:?} is not a string; quote it (kustomize refuses it)"
                );
                require_string_keys(x, what);
            }
        }
        Y::Sequence(items) => items.iter().for_each(|x| require_string_keys(x, what)),
        Y::Tagged(t) => require_string_keys(&t.value, what),
        _ => {}
    }
}

fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: expected one YAML document", rel(path));
    docs.remove(0)
}

fn str_at<'a>(v: &'a Value, ptr: &str, what: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no string at {ptr}"))
}

fn seq_at<'a>(v: &'a Value, ptr: &str, what: &str) -> &'a Vec<Value> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{what}: no list at {ptr}"))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `labels` ⊇ `selector` (both JSON objects of strings).
fn selects(selector: &Value, labels: &Value) -> bool {
    let (Some(sel), Some(labels)) = (selector.as_object(), labels.as_object()) else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// Following kustomize.

#[derive(Debug, Clone)]
struct Obj {
    /// The file the object came from (the kustomization, for generated ConfigMaps).
    file: PathBuf,
    doc: Value,
}

impl Obj {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("")
    }
    fn namespace(&self) -> Option<&str> {
        self.doc["metadata"]["namespace"].as_str()
    }
    fn what(&self) -> String {
        format!("{} {} ({})", self.kind(), self.name(), rel(&self.file))
    }
}

/// A ConfigMap made by a configMapGenerator: its keys and the files they come from.
#[derive(Debug, Clone)]
struct Generated {
    name: String,
    files: BTreeMap<String, PathBuf>,
}

/// What `kustomize build DIR` would produce, as far as these checks need: the objects with
/// namespaces and images set, the generated ConfigMaps, and every file that took part.
#[derive(Debug, Default)]
struct Build {
    objects: Vec<Obj>,
    generated: Vec<Generated>,
    files: BTreeSet<PathBuf>,
}

impl Build {
    fn all(&self, kind: &str) -> Vec<&Obj> {
        self.objects.iter().filter(|o| o.kind() == kind).collect()
    }
    fn one(&self, kind: &str) -> &Obj {
        let all = self.all(kind);
        assert_eq!(
            all.len(),
            1,
            "expected exactly one {kind}, found {}",
            all.len()
        );
        all[0]
    }
    fn find(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<&Obj> {
        self.objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name && o.namespace() == namespace)
    }
}

fn build(dir: &Path) -> Build {
    let kpath = dir.join("kustomization.yaml");
    assert!(kpath.is_file(), "{} has no kustomization.yaml", rel(dir));
    let k = yaml_doc(&kpath);
    let what = rel(&kpath);
    for key in k.as_object().map(|m| m.keys()).into_iter().flatten() {
        assert!(
            KUSTOMIZATION_KEYS.contains(&key.as_str()),
            "{what}: key `{key}` is not followed by tests/deploy_files.rs; teach `build` its file references"
        );
    }
    assert_eq!(str_at(&k, "/kind", &what), "Kustomization", "{what}");

    let mut out = Build::default();
    out.files.insert(kpath.clone());
    let mut entries = strings(k.get("resources"));
    entries.extend(strings(k.get("components")));
    for entry in entries {
        let p = dir.join(&entry);
        if p.is_dir() {
            let sub = build(&p);
            out.objects.extend(sub.objects);
            out.generated.extend(sub.generated);
            out.files.extend(sub.files);
        } else if p.is_file() {
            for doc in yaml_docs(&p) {
                out.objects.push(Obj {
                    file: p.clone(),
                    doc,
                });
            }
            out.files.insert(p);
        } else {
            panic!("{what}: resource `{entry}` does not exist");
        }
    }
    for patch in k
        .get("patches")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(path) = patch.get("path").and_then(Value::as_str) {
            let p = dir.join(path);
            assert!(p.is_file(), "{what}: patch `{path}` does not exist");
            out.files.insert(p);
        }
    }
    for generator in k
        .get("configMapGenerator")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(generator, "/name", &what).to_owned();
        let mut data = serde_json::Map::new();
        let mut files = BTreeMap::new();
        for entry in strings(generator.get("files")) {
            let (key, path) = match entry.split_once('=') {
                Some((key, path)) => (key.to_owned(), path.to_owned()),
                None => (
                    Path::new(&entry)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    entry.clone(),
                ),
            };
            let p = dir.join(&path);
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{what}: configMapGenerator file `{path}`: {e}"));
            data.insert(key.clone(), Value::from(text));
            out.files.insert(p.clone());
            files.insert(key, p);
        }
        assert!(!files.is_empty(), "{what}: generator {name} has no files");
        out.objects.push(Obj {
            file: kpath.clone(),
            doc: json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name}, "data": data}),
        });
        out.generated.push(Generated { name, files });
    }
    if let Some(ns) = k.get("namespace").and_then(Value::as_str) {
        for o in &mut out.objects {
            if !CLUSTER_SCOPED.contains(&o.kind()) {
                o.doc["metadata"]["namespace"] = Value::from(ns);
            }
        }
    }
    for image in k
        .get("images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(image, "/name", &what);
        let new_name = image["newName"].as_str().unwrap_or(name);
        for o in &mut out.objects {
            for c in containers_mut(&mut o.doc) {
                let current = c["image"].as_str().unwrap_or("").to_owned();
                let (base, tag) = current.split_once(':').unwrap_or((&current, ""));
                if base == name {
                    let tag = image["newTag"].as_str().unwrap_or(tag);
                    c["image"] = Value::from(if tag.is_empty() {
                        new_name.to_owned()
                    } else {
                        format!("{new_name}:{tag}")
                    });
                }
            }
        }
    }
    out
}

fn containers_mut(doc: &mut Value) -> Vec<&mut Value> {
    match doc.pointer_mut("/spec/template/spec/containers") {
        Some(Value::Array(cs)) => cs.iter_mut().collect(),
        _ => vec![],
    }
}

/// Every kustomization directory under deploy/.
fn kustomization_dirs() -> Vec<PathBuf> {
    common::all_files(&deploy())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect()
}

fn entra_dir() -> PathBuf {
    deploy().join("istio/entra-examples")
}

// ---------------------------------------------------------------------------------------------
// The collector's side: its CLI, its config, its pod.

/// Parses arguments exactly as `meshaudit serve` does (the same clap definition).
#[derive(Parser)]
struct ServeCli {
    #[command(flatten)]
    opts: ServeOptions,
}

fn meshaudit(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(args)
        .output()
        .expect("run meshaudit");
    assert!(out.status.success(), "meshaudit {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `--flags` that a help text lists.
fn help_flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect()
}

/// The collector's StatefulSet, its one container and what its settings resolve to.
struct Collector {
    build: Build,
    workload: Obj,
    container: Value,
    /// The TOML file behind `--config` (via the ConfigMap mounted where the flag points).
    config_file: PathBuf,
    config: ServeConfig,
}

impl Collector {
    fn load() -> Collector {
        let build = build(&deploy().join("collector"));
        let workload = build.one("StatefulSet").clone();
        let what = workload.what();
        let containers = seq_at(&workload.doc, "/spec/template/spec/containers", &what);
        let container = containers
            .iter()
            .find(|c| strings(c.get("command")).first().map(String::as_str) == Some("meshaudit"))
            .unwrap_or_else(|| panic!("{what}: no container runs the `meshaudit` binary"))
            .clone();
        let args = strings(container.get("args"));
        assert_eq!(
            args.first().map(String::as_str),
            Some("serve"),
            "{what}: args must start with the `serve` subcommand"
        );
        let parsed = ServeCli::try_parse_from(
            std::iter::once("meshaudit serve").chain(args[1..].iter().map(String::as_str)),
        )
        .unwrap_or_else(|e| panic!("{what}: `meshaudit serve` refuses the args {args:?}: {e}"));
        let config_path = parsed
            .opts
            .config
            .clone()
            .unwrap_or_else(|| panic!("{what}: settings come from a ConfigMap: pass --config"));
        let config_file = mounted_config_file(&build, &workload, &container, &config_path);
        let config = ServeConfig::resolve(ServeOptions {
            config: Some(config_file.clone()),
            ..parsed.opts
        })
        .unwrap_or_else(|e| panic!("{}: the collector refuses it: {e}", rel(&config_file)));
        Collector {
            build,
            workload,
            container,
            config_file,
            config,
        }
    }

    fn pod_spec(&self) -> &Value {
        &self.workload.doc["spec"]["template"]["spec"]
    }

    fn pod_labels(&self) -> &Value {
        &self.workload.doc["spec"]["template"]["metadata"]["labels"]
    }

    fn namespace(&self) -> &str {
        self.workload
            .namespace()
            .unwrap_or_else(|| panic!("{}: no namespace after kustomize", self.workload.what()))
    }

    /// The container port a Service targetPort or probe port names (by name or number).
    fn container_port(&self, port: &Value) -> u64 {
        let ports = seq_at(&self.container, "/ports", "collector container");
        let found = match port {
            Value::String(name) => ports.iter().find(|p| p["name"].as_str() == Some(name)),
            Value::Number(n) => ports
                .iter()
                .find(|p| p["containerPort"].as_u64() == n.as_u64()),
            _ => None,
        };
        found
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {port} in the collector container"))
    }

    fn volume_mount(&self, name: &str) -> &Value {
        seq_at(&self.container, "/volumeMounts", "collector container")
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volumeMount of volume {name}"))
    }

    /// The Service in front of the collector's pods, and its ALS port.
    fn service(&self) -> (&Obj, &Value) {
        let svc = self
            .build
            .all("Service")
            .into_iter()
            .find(|s| selects(&s.doc["spec"]["selector"], self.pod_labels()))
            .unwrap_or_else(|| panic!("no Service selects the collector's pods"));
        let port = seq_at(&svc.doc, "/spec/ports", &svc.what())
            .iter()
            .find(|p| {
                self.container_port(p.get("targetPort").unwrap_or(&p["port"]))
                    == u64::from(self.config.als_addr.port())
            })
            .unwrap_or_else(|| panic!("{}: no port reaches the ALS listener", svc.what()));
        (svc, port)
    }

    /// The Service port that reaches the OTLP listener.
    fn otlp_service_port(&self) -> &Value {
        let (svc, _) = self.service();
        let otlp = self
            .config
            .otlp_addr
            .unwrap_or_else(|| panic!("the shipped config turns the OTLP listener off"));
        seq_at(&svc.doc, "/spec/ports", &svc.what())
            .iter()
            .find(|p| {
                self.container_port(p.get("targetPort").unwrap_or(&p["port"]))
                    == u64::from(otlp.port())
            })
            .unwrap_or_else(|| panic!("{}: no port reaches the OTLP listener", svc.what()))
    }

    /// What Istio's extension providers must name: `<svc>.<ns>.svc.cluster.local`.
    fn service_fqdn(&self) -> String {
        let (svc, _) = self.service();
        format!(
            "{}.{}.svc.cluster.local",
            svc.name(),
            svc.namespace().unwrap_or("default")
        )
    }
}

/// Maps the in-pod `--config` path to the file in this repository, through the volume mount,
/// the ConfigMap volume and the configMapGenerator that makes the ConfigMap.
fn mounted_config_file(build: &Build, workload: &Obj, container: &Value, path: &Path) -> PathBuf {
    let what = workload.what();
    let mount = seq_at(container, "/volumeMounts", &what)
        .iter()
        .find(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|mp| path.starts_with(mp))
        })
        .unwrap_or_else(|| panic!("{what}: nothing is mounted at {}", path.display()));
    let mount_path = str_at(mount, "/mountPath", &what);
    let volume_name = str_at(mount, "/name", &what);
    let volume = seq_at(&workload.doc, "/spec/template/spec/volumes", &what)
        .iter()
        .find(|v| v["name"].as_str() == Some(volume_name))
        .unwrap_or_else(|| panic!("{what}: no volume {volume_name}"));
    let cm_name = str_at(
        volume,
        "/configMap/name",
        &format!("{what}: volume {volume_name}"),
    );
    let generated = build
        .generated
        .iter()
        .find(|g| g.name == cm_name)
        .unwrap_or_else(|| panic!("{what}: no configMapGenerator makes ConfigMap {cm_name}"));
    let rest = path
        .strip_prefix(mount_path)
        .unwrap_or_else(|_| panic!("{} is not under {mount_path}", path.display()))
        .to_string_lossy()
        .into_owned();
    // `items` may map keys to other file names inside the mount.
    let key = volume["configMap"]["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|i| i["path"].as_str() == Some(rest.as_str()))
                .and_then(|i| i["key"].as_str())
        })
        .unwrap_or(&rest);
    generated
        .files
        .get(key)
        .unwrap_or_else(|| {
            panic!(
                "ConfigMap {cm_name} has no key {key} (for --config {})",
                path.display()
            )
        })
        .clone()
}

// ---------------------------------------------------------------------------------------------
// The Istio side.

/// Extension providers of the mesh config fragments; both fragments must agree.
fn extension_providers() -> Vec<Value> {
    let dir = deploy().join(MESH_CONFIG_DIR);
    let helm = yaml_doc(&dir.join("helm-values.yaml"));
    let operator = yaml_doc(&dir.join("istiooperator.yaml"));
    assert_eq!(
        str_at(&operator, "/kind", "istiooperator.yaml"),
        "IstioOperator"
    );
    let from_helm = seq_at(&helm, "/meshConfig/extensionProviders", "helm-values.yaml");
    let from_operator = seq_at(
        &operator,
        "/spec/meshConfig/extensionProviders",
        "istiooperator.yaml",
    );
    assert_eq!(
        from_helm, from_operator,
        "helm-values.yaml and istiooperator.yaml must register the same providers"
    );
    from_helm.clone()
}

fn provider_names() -> BTreeSet<String> {
    extension_providers()
        .iter()
        .map(|p| str_at(p, "/name", "extension provider").to_owned())
        .collect()
}

/// Calls `f(key, value)` on every mapping entry anywhere inside `v`.
fn walk<'a>(v: &'a Value, f: &mut impl FnMut(&'a str, &'a Value)) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                f(k, x);
                walk(x, f);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}

/// The provider names of one Telemetry accessLogging rule.
fn rule_providers(rule: &Value) -> BTreeSet<String> {
    rule["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .map(str::to_owned)
        .collect()
}

fn all_yaml_docs() -> Vec<(PathBuf, Value)> {
    common::all_files(&deploy())
        .into_iter()
        .filter(|p| is_yaml(p))
        .flat_map(|p| yaml_docs(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests: files and kustomize.

#[test]
fn every_yaml_file_parses_and_every_resource_is_a_named_object() {
    let files: Vec<PathBuf> = common::all_files(&deploy())
        .into_iter()
        .filter(|p| is_yaml(p))
        .collect();
    assert!(
        files.len() >= 10,
        "deploy/ holds {} YAML files",
        files.len()
    );
    for f in &files {
        let docs = yaml_docs(f);
        assert!(!docs.is_empty(), "{}: no YAML document", rel(f));
        for d in &docs {
            assert!(d.is_object(), "{}: a document is not a mapping", rel(f));
        }
    }
    // Every object kustomize applies has apiVersion, kind, name and, unless cluster-scoped, a
    // namespace; no two objects collide.
    for dir in kustomization_dirs() {
        let b = build(&dir);
        let mut seen = BTreeSet::new();
        for o in &b.objects {
            let what = o.what();
            assert!(o.doc["apiVersion"].is_string(), "{what}: no apiVersion");
            assert!(
                !o.kind().is_empty() && !o.name().is_empty(),
                "{what}: no kind or name"
            );
            assert_eq!(
                o.namespace().is_none(),
                CLUSTER_SCOPED.contains(&o.kind()),
                "{what}: namespaced objects need a namespace, cluster-scoped ones none"
            );
            assert!(
                seen.insert((
                    o.kind().to_owned(),
                    o.namespace().map(str::to_owned),
                    o.name().to_owned()
                )),
                "{what}: defined twice in {}",
                rel(&dir)
            );
        }
    }
}

#[test]
fn kustomizations_list_existing_files_and_every_file_is_used() {
    let dirs = kustomization_dirs();
    let mut used = BTreeSet::new();
    for d in &dirs {
        used.extend(build(d).files); // panics on a listed file that does not exist
    }
    let mesh_config = deploy().join(MESH_CONFIG_DIR);
    for f in common::all_files(&deploy()) {
        let documentation = f.extension().is_some_and(|e| e == "md");
        let merged_by_hand = f.starts_with(&mesh_config);
        assert!(
            used.contains(&f) || documentation || merged_by_hand,
            "{} is not listed by any kustomization.yaml (list it, or it never reaches a cluster)",
            rel(&f)
        );
        assert!(
            !(merged_by_hand && used.contains(&f)),
            "{}: mesh config fragments are not Kubernetes objects; no kustomization may list them",
            rel(&f)
        );
    }
    // Each kustomization is reachable: from deploy/kustomization.yaml, or named by an apply
    // command in deploy/README.md.
    let top = build(&deploy()).files;
    let readme = std::fs::read_to_string(deploy().join("README.md")).expect("deploy/README.md");
    for d in &dirs {
        let k = d.join("kustomization.yaml");
        let named = readme.contains(&format!("kubectl apply -k deploy/{}", rel(d)));
        assert!(
            top.contains(&k) || named,
            "{} is neither part of deploy/ nor applied in deploy/README.md",
            rel(d)
        );
    }
    // The examples that need editing are not applied by `kubectl apply -k deploy/`.
    assert!(
        !top.contains(&entra_dir().join("kustomization.yaml")),
        "istio/entra-examples has placeholders: keep it out of deploy/kustomization.yaml"
    );
}

#[test]
fn readme_commands_name_real_paths() {
    let readme = std::fs::read_to_string(deploy().join("README.md")).expect("deploy/README.md");
    let mut checked = 0;
    for word in readme.split(|c: char| c.is_whitespace() || c == '`' || c == '(' || c == ')') {
        let Some(path) = word.strip_prefix("deploy/") else {
            continue;
        };
        // A glob (`*.yaml`) names the directory it is in.
        let path = path.split('*').next().unwrap_or(path);
        let p = deploy().join(path.trim_end_matches([',', '.', ':']));
        assert!(
            p.exists(),
            "deploy/README.md names deploy/{path}, which does not exist"
        );
        checked += 1;
    }
    for (i, line) in readme.lines().enumerate() {
        if let Some(rest) = line.split("kubectl apply -k ").nth(1) {
            let dir = rest.split_whitespace().next().unwrap_or("");
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            assert!(
                p.join("kustomization.yaml").is_file(),
                "deploy/README.md line {}: `kubectl apply -k {dir}` has no kustomization.yaml",
                i + 1
            );
        }
    }
    assert!(
        checked >= 5,
        "deploy/README.md names only {checked} deploy/ paths"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: the collector's manifests against the collector.

#[test]
fn statefulset_args_are_flags_of_meshaudit_serve() {
    let c = Collector::load();
    let top = meshaudit(&["--help"]);
    assert!(
        top.lines().any(|l| l.trim_start().starts_with("serve ")),
        "`meshaudit --help` lists no serve command:\n{top}"
    );
    let flags = help_flags(&meshaudit(&["serve", "--help"]));
    assert!(flags.contains("--config"), "serve --help: {flags:?}");
    let args = strings(c.container.get("args"));
    let given: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split_once('=').map_or(a.as_str(), |(f, _)| f))
        .collect();
    assert!(
        !given.is_empty(),
        "the StatefulSet passes no flag: {args:?}"
    );
    for flag in given {
        assert!(
            flags.contains(flag),
            "{flag} is not listed by `meshaudit serve --help`"
        );
    }
    // Environment: a MESHAUDIT_* name the collector does not know stops it at start-up.
    let known: BTreeSet<String> = {
        use clap::CommandFactory;
        ServeCli::command()
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect()
    };
    for env in c.container["env"].as_array().into_iter().flatten() {
        let name = str_at(env, "/name", "container env");
        assert!(
            !name.starts_with("MESHAUDIT_") || known.contains(name),
            "env {name} is not a setting of meshaudit serve"
        );
    }
}

#[test]
fn configmap_toml_is_accepted_and_matches_the_pod() {
    let c = Collector::load();
    // Only the collector's keys: ServeConfig::resolve above parsed it with deny_unknown_fields
    // and validated it; here, what it resolved to must fit the pod around it.
    let cfg = &c.config;
    assert!(
        cfg.als_addr.ip().is_unspecified() && cfg.admin_addr.ip().is_unspecified(),
        "listeners bound to {} / {} are unreachable from the Service and the kubelet",
        cfg.als_addr,
        cfg.admin_addr
    );
    assert_eq!(
        c.container_port(&json!("grpc-als")),
        u64::from(cfg.als_addr.port())
    );
    assert_eq!(
        c.container_port(&json!("http-admin")),
        u64::from(cfg.admin_addr.port())
    );

    // The data dir is a writable volume, since the root filesystem is read-only.
    let mount = seq_at(&c.container, "/volumeMounts", "collector container")
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == Some(cfg.data_dir.as_path()))
        .unwrap_or_else(|| {
            panic!(
                "data_dir {} is not a mounted volume",
                cfg.data_dir.display()
            )
        });
    assert_ne!(
        mount["readOnly"],
        json!(true),
        "the data volume is read-only"
    );
    // Durable: the data volume (Parquet and the spool under it) is a PersistentVolumeClaim per
    // replica, from the StatefulSet's volumeClaimTemplates, never a pod volume (an emptyDir
    // dies with the pod), and it is kept when the StatefulSet is deleted or scaled down.
    let volume_name = str_at(mount, "/name", "data mount");
    assert!(
        cfg.spool_dir.starts_with(&cfg.data_dir),
        "the spool ({}) must be on the data volume ({})",
        cfg.spool_dir.display(),
        cfg.data_dir.display()
    );
    assert!(
        seq_at(c.pod_spec(), "/volumes", "pod")
            .iter()
            .all(|v| v["name"].as_str() != Some(volume_name)),
        "the data volume {volume_name} must come from volumeClaimTemplates, not a pod volume"
    );
    let sts = &c.workload.doc["spec"];
    let claim = seq_at(sts, "/volumeClaimTemplates", "StatefulSet")
        .iter()
        .find(|t| t["metadata"]["name"].as_str() == Some(volume_name))
        .unwrap_or_else(|| panic!("no volumeClaimTemplate {volume_name}"));
    assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert!(claim["spec"]["resources"]["requests"]["storage"].is_string());
    assert_eq!(
        sts["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        "audit data must outlive the StatefulSet"
    );
    assert_eq!(
        c.pod_spec()["enableServiceLinks"],
        json!(false),
        "no service-link variables in the collector's pods"
    );
    // The config volume is mounted read-only.
    let config_volume = seq_at(c.pod_spec(), "/volumes", "pod")
        .iter()
        .find(|v| v["configMap"].is_object())
        .expect("config volume");
    let config_mount = c.volume_mount(str_at(config_volume, "/name", "config volume"));
    assert_eq!(config_mount["readOnly"], json!(true));

    // The pod gets longer than the collector's drain before it is killed.
    let grace = c.pod_spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > cfg.shutdown_timeout.as_secs(),
        "terminationGracePeriodSeconds {grace} must exceed the collector's drain of {:?}",
        cfg.shutdown_timeout
    );
}

#[test]
fn service_probes_and_scrape_annotations_use_the_configured_ports() {
    let c = Collector::load();
    let cfg = &c.config;
    let (svc, als) = c.service();
    assert_eq!(als["name"], json!("grpc-als"), "{}", svc.what());
    assert_eq!(als["appProtocol"], json!("grpc"), "{}", svc.what());
    let otlp = c.otlp_service_port();
    assert_eq!(otlp["name"], json!("grpc-otlp"), "{}", svc.what());
    assert_eq!(otlp["appProtocol"], json!("grpc"), "{}", svc.what());
    let admin = seq_at(&svc.doc, "/spec/ports", &svc.what())
        .iter()
        .find(|p| p["name"] != als["name"] && p["name"] != otlp["name"])
        .expect("an admin port on the Service");
    assert_eq!(
        c.container_port(admin.get("targetPort").unwrap_or(&admin["port"])),
        u64::from(cfg.admin_addr.port())
    );

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c.container[probe]["httpGet"];
        assert_eq!(get["path"], json!(path), "{probe}");
        assert_eq!(
            c.container_port(&get["port"]),
            u64::from(cfg.admin_addr.port()),
            "{probe} must use the admin port"
        );
    }

    let ann = &c.workload.doc["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], json!("true"));
    assert_eq!(
        ann["prometheus.io/port"],
        json!(cfg.admin_addr.port().to_string())
    );
    assert_eq!(ann["prometheus.io/path"], json!("/metrics"));
}

#[test]
fn pods_are_hardened_spread_and_budgeted() {
    let c = Collector::load();
    let dep = &c.workload.doc;
    let what = c.workload.what();
    assert!(
        dep["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "{what}: replicas >= 2"
    );
    assert!(
        selects(&dep["spec"]["selector"]["matchLabels"], c.pod_labels()),
        "{what}: selector"
    );

    let pod = c.pod_spec();
    let psc = &pod["securityContext"];
    let csc = &c.container["securityContext"];
    assert_eq!(psc["runAsNonRoot"], json!(true), "{what}: pod runAsNonRoot");
    assert_ne!(
        psc["runAsUser"],
        json!(0),
        "{what}: runAsUser 0 contradicts runAsNonRoot"
    );
    assert_eq!(csc["readOnlyRootFilesystem"], json!(true), "{what}");
    assert_eq!(csc["allowPrivilegeEscalation"], json!(false), "{what}");
    assert!(
        strings(csc.pointer("/capabilities/drop")).contains(&"ALL".to_owned()),
        "{what}"
    );
    assert!(
        psc["seccompProfile"]["type"] == json!("RuntimeDefault")
            || csc["seccompProfile"]["type"] == json!("RuntimeDefault"),
        "{what}: seccomp RuntimeDefault"
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c.container["resources"][kind][res].is_string(),
                "{what}: resources.{kind}.{res}"
            );
        }
    }

    let spread = seq_at(pod, "/topologySpreadConstraints", &what);
    assert!(
        spread
            .iter()
            .any(|s| s["topologyKey"] == json!("kubernetes.io/hostname")
                && selects(&s["labelSelector"]["matchLabels"], c.pod_labels())),
        "{what}: no spread across nodes that selects the collector's pods"
    );

    let pdb = c.build.one("PodDisruptionBudget");
    assert!(
        selects(&pdb.doc["spec"]["selector"]["matchLabels"], c.pod_labels()),
        "{}: selects other pods",
        pdb.what()
    );
    assert_eq!(pdb.namespace(), Some(c.namespace()));

    let sa = str_at(pod, "/serviceAccountName", &what);
    assert!(
        c.build
            .find("ServiceAccount", Some(c.namespace()), sa)
            .is_some(),
        "{what}: ServiceAccount {sa} is not deployed"
    );
    assert!(
        c.build.find("Namespace", None, c.namespace()).is_some(),
        "the Namespace {} is not deployed",
        c.namespace()
    );
    // The image is set through kustomize's `images`, so users can override it.
    let image = str_at(&c.container, "/image", &what);
    let k = yaml_doc(&deploy().join("collector/kustomization.yaml"));
    let base = image.split(':').next().unwrap_or(image);
    assert!(
        seq_at(&k, "/images", "collector/kustomization.yaml")
            .iter()
            .any(|i| i["newName"].as_str().or(i["name"].as_str()) == Some(base)),
        "{what}: image {image} is not set by an `images` entry"
    );
}

/// The real collector, started on the ConfigMap's TOML (only the addresses and the data dir
/// overridden by flags, which take precedence), answers every HTTP path the manifests point
/// at, and stops cleanly on SIGTERM as Kubernetes stops it.
#[test]
fn the_shipped_config_serves_every_path_the_manifests_probe() {
    let c = Collector::load();
    let ann = &c.workload.doc["spec"]["template"]["metadata"]["annotations"];
    let mut paths: Vec<String> = ["readinessProbe", "livenessProbe"]
        .iter()
        .map(|p| str_at(&c.container, &format!("/{p}/httpGet/path"), p).to_owned())
        .collect();
    paths.push(str_at(ann, "/prometheus.io~1path", "scrape annotation").to_owned());

    let data = tempfile::tempdir().expect("tempdir");
    let config = c.config_file.to_str().expect("utf-8 path");
    let collector = common::Collector::start(data.path(), &["--config", config]);
    for path in &paths {
        let (status, body) = common::http_get(collector.admin_addr, path)
            .unwrap_or_else(|| panic!("GET {path}: no answer"));
        assert_eq!(status, 200, "GET {path}: {body}");
        if path == "/metrics" {
            assert!(
                body.contains("meshaudit_"),
                "/metrics has no meshaudit series:\n{body}"
            );
        }
    }
    let (status, output) = collector.stop();
    assert!(
        status.success(),
        "collector exit {status} after SIGTERM:\n{output}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: Istio wiring.

#[test]
fn extension_providers_point_at_the_collector_service() {
    let c = Collector::load();
    let (_, als) = c.service();
    let fqdn = c.service_fqdn();
    let providers = extension_providers();
    let mut log_names = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for p in &providers {
        let name = str_at(p, "/name", "extension provider");
        if let Some(body) = p.get("envoyOtelAls") {
            check_otel_provider(&c, name, body);
            continue;
        }
        let (kind, body) = ["envoyHttpAls", "envoyTcpAls"]
            .iter()
            .find_map(|k| p.get(*k).map(|b| (*k, b)))
            .unwrap_or_else(|| panic!("provider {name} is neither envoyHttpAls nor envoyTcpAls"));
        kinds.insert(kind);
        assert_eq!(body["service"], json!(fqdn), "provider {name}: service");
        assert_eq!(
            body["port"], als["port"],
            "provider {name}: port of Service port grpc-als"
        );
        let log_name = str_at(body, "/logName", name);
        assert!(
            log_names.insert(log_name.to_owned()),
            "provider {name}: logName {log_name} reused"
        );
        // Setting the list replaces Istio's default: keep the peer metadata the join reads.
        let objects = strings(body.get("filterStateObjectsToLog"));
        for o in ["upstream_peer", "downstream_peer"] {
            assert!(
                objects.contains(&o.to_owned()),
                "provider {name}: {o} not logged"
            );
        }
        if kind == "envoyHttpAls" {
            // The collector fills trace_id from this header (src/join/traffic.rs).
            assert!(
                strings(body.get("additionalRequestHeadersToLog"))
                    .contains(&"traceparent".to_owned()),
                "provider {name}: traceparent not logged"
            );
        }
    }
    assert_eq!(kinds.len(), 2, "one HTTP and one TCP provider");

    // The main README shows the same registration.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks: Vec<&str> = readme
        .split("```yaml")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains("extensionProviders"))
        .collect();
    assert!(
        blocks.len() >= 2,
        "README.md shows the ALS and the OpenTelemetry providers"
    );
    let shown: Vec<Value> = blocks
        .iter()
        .flat_map(|block| {
            let doc = serde_norway::Deserializer::from_str(block)
                .next()
                .map(|d| Value::deserialize(d).expect("README yaml"))
                .expect("README yaml document");
            seq_at(&doc, "/meshConfig/extensionProviders", "README.md").clone()
        })
        .collect();
    assert!(
        shown.iter().any(|p| p.get("envoyOtelAls").is_some()),
        "README.md shows the envoyOtelAls provider"
    );
    for p in &shown {
        let name = str_at(p, "/name", "README provider");
        let ours = providers
            .iter()
            .find(|q| q["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("README.md names provider {name}, deploy/ does not"));
        for kind in ["envoyHttpAls", "envoyTcpAls", "envoyOtelAls"] {
            for field in ["service", "port", "logName", "logFormat"] {
                assert_eq!(
                    p.pointer(&format!("/{kind}/{field}")),
                    ours.pointer(&format!("/{kind}/{field}")),
                    "README.md and deploy/ disagree on {name}.{kind}.{field}"
                );
            }
        }
    }
}

/// The `envoyOtelAls` provider: the Service's OTLP port, and labels that carry the attribute
/// contract (docs/otlp-attributes.md) without a secret header.
fn check_otel_provider(c: &Collector, name: &str, body: &Value) {
    use meshaudit::ingest::otlp::entry::keys;
    assert_eq!(
        body["service"],
        json!(c.service_fqdn()),
        "provider {name}: service"
    );
    assert_eq!(
        body["port"],
        c.otlp_service_port()["port"],
        "provider {name}: port of the Service port that reaches otlp_addr"
    );
    let labels = body["logFormat"]["labels"]
        .as_object()
        .unwrap_or_else(|| panic!("provider {name}: no logFormat.labels"));
    // istiod sets disable_builtin_labels: the proxy's identity must come from labels.
    for key in [
        keys::NODE_ID,
        keys::NODE_CLUSTER,
        keys::LOG_NAME,
        keys::METHOD,
        keys::STATUS_CODE,
        keys::RESPONSE_CODE_DETAILS,
        keys::RESPONSE_FLAGS,
        keys::PEER_URI_SAN,
        keys::LOCAL_URI_SAN,
        keys::UPSTREAM_CLUSTER,
        keys::UPSTREAM_HOST,
        "envoy.dynamic_metadata.envoy.filters.http.jwt_authn",
        "envoy.dynamic_metadata.envoy.filters.http.rbac",
        "envoy.dynamic_metadata.envoy.filters.http.ext_authz",
        "http.request.header.traceparent",
    ] {
        assert!(
            labels.contains_key(key),
            "provider {name}: label {key} missing"
        );
    }
    for (key, value) in labels {
        let v = value.as_str().unwrap_or("").to_ascii_lowercase();
        for secret in SECRET_HEADERS {
            assert!(
                !v.contains(&format!("%req({secret})%")) && !key.ends_with(&format!(".{secret}")),
                "provider {name}: label {key} logs {secret}, a secret"
            );
        }
    }
}

/// The providers a mesh-wide Telemetry turns on: the gRPC ALS ones (the OpenTelemetry provider
/// is their alternative, enabled instead of them, never with them).
fn als_provider_names() -> BTreeSet<String> {
    extension_providers()
        .iter()
        .filter(|p| p.get("envoyOtelAls").is_none())
        .map(|p| str_at(p, "/name", "extension provider").to_owned())
        .collect()
}

#[test]
fn no_secret_header_is_logged_or_forwarded() {
    let mut lists = 0;
    for (file, doc) in all_yaml_docs() {
        walk(&doc, &mut |key, value| {
            if key.ends_with("HeadersToLog") || key.ends_with("TrailersToLog") {
                lists += 1;
                for h in strings(Some(value)) {
                    assert!(
                        !SECRET_HEADERS.contains(&h.to_ascii_lowercase().as_str()),
                        "{}: {key} logs {h}, a secret",
                        rel(&file)
                    );
                }
            }
            if key == "forwardOriginalToken" {
                assert_ne!(
                    value,
                    &json!(true),
                    "{}: forwards the raw token",
                    rel(&file)
                );
            }
            if key == "outputClaimToHeaders" {
                for h in value.as_array().into_iter().flatten() {
                    let name = h["header"].as_str().unwrap_or("").to_ascii_lowercase();
                    assert!(
                        !SECRET_HEADERS.contains(&name.as_str()),
                        "{}: {name}",
                        rel(&file)
                    );
                }
            }
        });
    }
    // The walk saw the header lists: both mesh config fragments have one.
    assert!(lists >= 2, "found only {lists} header lists under deploy/");
}

#[test]
fn telemetry_names_registered_providers() {
    let c = Collector::load();
    let providers = provider_names();
    let b = build(&deploy());
    let telemetries = b.all("Telemetry");
    assert!(!telemetries.is_empty(), "no Telemetry resource in deploy/");
    for t in &telemetries {
        for rule in seq_at(&t.doc, "/spec/accessLogging", &t.what()) {
            for p in seq_at(rule, "/providers", &t.what()) {
                let name = str_at(p, "/name", &t.what());
                assert!(
                    providers.contains(name),
                    "{}: provider {name} is not registered",
                    t.what()
                );
            }
        }
    }
    let als_providers = als_provider_names();
    let enables_all = |t: &Obj| {
        seq_at(&t.doc, "/spec/accessLogging", &t.what())
            .iter()
            .any(|r| r["disabled"] != json!(true) && rule_providers(r) == als_providers)
    };
    // Mesh-wide: root namespace, no selector or target, all providers on.
    assert!(
        telemetries
            .iter()
            .any(|t| t.namespace() == Some("istio-system")
                && t.doc["spec"]["selector"].is_null()
                && t.doc["spec"]["targetRefs"].is_null()
                && enables_all(t)),
        "no mesh-wide Telemetry in istio-system turns on every meshaudit provider"
    );
    // The collector's own sidecar does not report to it.
    assert!(
        telemetries
            .iter()
            .any(|t| t.namespace() == Some(c.namespace())
                && seq_at(&t.doc, "/spec/accessLogging", &t.what())
                    .iter()
                    .any(|r| r["disabled"] == json!(true))),
        "no Telemetry in {} turns the collector's self-reporting off",
        c.namespace()
    );
}

#[test]
fn als_port_requires_mtls() {
    let c = Collector::load();
    let b = build(&deploy());
    let pa = b
        .all("PeerAuthentication")
        .into_iter()
        .find(|p| p.namespace() == Some(c.namespace()))
        .expect("a PeerAuthentication in the collector's namespace");
    assert!(
        selects(&pa.doc["spec"]["selector"]["matchLabels"], c.pod_labels()),
        "{}: does not select the collector",
        pa.what()
    );
    assert_eq!(
        pa.doc["spec"]["mtls"]["mode"],
        json!("STRICT"),
        "{}",
        pa.what()
    );
    let ports = pa.doc["spec"]["portLevelMtls"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        !ports.contains_key(&c.config.als_addr.port().to_string()),
        "{}: the ALS port must stay STRICT",
        pa.what()
    );
    for port in ports.keys() {
        assert_eq!(
            port,
            &c.config.admin_addr.port().to_string(),
            "{}: unexpected port",
            pa.what()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: Entra examples.

const V1_ISSUER: &str = "https://sts.windows.net/TENANT_ID/";
const V2_ISSUER: &str = "https://login.microsoftonline.com/TENANT_ID/v2.0";

#[test]
fn request_authentication_accepts_both_entra_issuers() {
    let b = build(&entra_dir());
    let ra = b.one("RequestAuthentication");
    let rules = seq_at(&ra.doc, "/spec/jwtRules", &ra.what());
    let by_issuer: BTreeMap<&str, &Value> = rules
        .iter()
        .map(|r| (str_at(r, "/issuer", &ra.what()), r))
        .collect();
    assert_eq!(
        by_issuer.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([V1_ISSUER, V2_ISSUER]),
        "{}: one rule per Entra issuer (v1 with its trailing slash, v2)",
        ra.what()
    );
    let jwks = |iss| str_at(by_issuer[iss], "/jwksUri", iss).to_owned();
    assert_eq!(
        jwks(V1_ISSUER),
        "https://login.microsoftonline.com/TENANT_ID/discovery/keys"
    );
    assert_eq!(
        jwks(V2_ISSUER),
        "https://login.microsoftonline.com/TENANT_ID/discovery/v2.0/keys"
    );
    for (iss, rule) in &by_issuer {
        let aud = strings(rule.get("audiences"));
        assert!(
            aud.iter().any(|a| a.contains("API_CLIENT_ID")),
            "{iss}: audiences {aud:?}"
        );
    }
    // Placeholders are marked for the reader.
    for f in ["requestauthentication.yaml", "authorizationpolicy.yaml"] {
        let text = std::fs::read_to_string(entra_dir().join(f)).expect("read");
        assert!(
            text.contains("EDIT BEFORE APPLYING"),
            "{f}: placeholders not marked"
        );
    }
}

#[test]
fn authorization_policies_use_entra_claims_and_one_is_dry_run() {
    let b = build(&entra_dir());
    let ra = b.one("RequestAuthentication");
    let issuers: Vec<String> = seq_at(&ra.doc, "/spec/jwtRules", "jwtRules")
        .iter()
        .map(|r| str_at(r, "/issuer", "jwtRule").to_owned())
        .collect();
    let policies = b.all("AuthorizationPolicy");
    let mut claims = BTreeSet::new();
    let mut dry_run = 0;
    for p in &policies {
        let what = p.what();
        // Claims exist only where the RequestAuthentication verified the token.
        assert_eq!(p.namespace(), ra.namespace(), "{what}");
        assert_eq!(
            p.doc["spec"]["selector"], ra.doc["spec"]["selector"],
            "{what}"
        );
        let action = p.doc["spec"]["action"].as_str().unwrap_or("ALLOW");
        assert!(
            ["ALLOW", "DENY", "AUDIT", "CUSTOM"].contains(&action),
            "{what}: {action}"
        );
        match p.doc["metadata"]["annotations"]["istio.io/dry-run"].as_str() {
            Some("true") => dry_run += 1,
            None => {}
            Some(other) => {
                panic!("{what}: istio.io/dry-run must be the string \"true\", not {other}")
            }
        }
        walk(&p.doc, &mut |key, value| {
            if key == "key" {
                if let Some(claim) = value
                    .as_str()
                    .and_then(|k| k.strip_prefix("request.auth.claims["))
                {
                    claims.insert(claim.trim_end_matches(']').to_owned());
                }
            }
            // `<iss>/<sub>`: the v1 issuer's own trailing slash makes it `.../TENANT_ID//*`.
            if key == "requestPrincipals" || key == "notRequestPrincipals" {
                for principal in strings(Some(value)) {
                    assert!(
                        principal == "*"
                            || issuers
                                .iter()
                                .any(|iss| principal.starts_with(&format!("{iss}/"))),
                        "{what}: principal {principal} matches no configured issuer"
                    );
                }
            }
        });
    }
    assert!(
        dry_run >= 1,
        "no AuthorizationPolicy has istio.io/dry-run: \"true\""
    );
    assert!(
        dry_run < policies.len(),
        "every example is dry-run: show an enforced one too"
    );
    for claim in ["tid", "roles", "groups"] {
        assert!(
            claims.contains(claim),
            "no example decides on the `{claim}` claim: {claims:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: kustomize itself.

/// `kubectl kustomize` renders every kustomization, and the render holds exactly the objects
/// modelled above, with the generated ConfigMap referenced under its hashed name and the image
/// set. Needs kubectl (kustomize v5): skipped with a notice where it is missing, required in CI.
#[test]
fn kubectl_kustomize_renders_what_the_checks_model() {
    let version = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    let Some(version) = version.ok().filter(|o| o.status.success()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubectl is needed in CI to render deploy/ with kustomize"
        );
        eprintln!("SKIPPED kubectl_kustomize_renders_what_the_checks_model: kubectl not found");
        return;
    };
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.contains("Kustomize Version: v5"),
        "kubectl's kustomize is too old for deploy/ (needs v5):\n{version}"
    );
    for dir in kustomization_dirs() {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .expect("run kubectl kustomize");
        assert!(
            out.status.success(),
            "kubectl kustomize {} failed:\n{}",
            rel(&dir),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rendered: Vec<Value> = serde_norway::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).expect("kustomize output is YAML"))
            .filter(|v| !v.is_null())
            .collect();
        let model = build(&dir);
        // Generated names get a content hash: map them back to the generator's name.
        let unhash = |name: &str| -> String {
            model
                .generated
                .iter()
                .find(|g| {
                    name.strip_prefix(&g.name)
                        .and_then(|rest| rest.strip_prefix('-'))
                        .is_some_and(|h| !h.is_empty() && !h.contains('-'))
                })
                .map_or_else(|| name.to_owned(), |g| g.name.clone())
        };
        let rendered_ids: BTreeSet<(String, Option<String>, String)> = rendered
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or("").to_owned(),
                    o["metadata"]["namespace"].as_str().map(str::to_owned),
                    unhash(o["metadata"]["name"].as_str().unwrap_or("")),
                )
            })
            .collect();
        let model_ids: BTreeSet<(String, Option<String>, String)> = model
            .objects
            .iter()
            .map(|o| {
                (
                    o.kind().to_owned(),
                    o.namespace().map(str::to_owned),
                    o.name().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            rendered_ids,
            model_ids,
            "{}: kustomize and the model disagree",
            rel(&dir)
        );

        // Every ConfigMap a rendered pod mounts exists in the render; images match the model.
        let names: BTreeSet<&str> = rendered
            .iter()
            .filter(|o| o["kind"] == json!("ConfigMap"))
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        for o in rendered
            .iter()
            .filter(|o| o["kind"] == json!("StatefulSet"))
        {
            for v in o
                .pointer("/spec/template/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    assert!(
                        names.contains(cm),
                        "{}: mounts missing ConfigMap {cm}",
                        rel(&dir)
                    );
                }
            }
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            let modelled = model
                .find("StatefulSet", o["metadata"]["namespace"].as_str(), name)
                .expect("modelled StatefulSet");
            assert_eq!(
                o.pointer("/spec/template/spec/containers/0/image"),
                modelled
                    .doc
                    .pointer("/spec/template/spec/containers/0/image"),
                "{}: image",
                rel(&dir)
            );
        }
    }
}

/// A logger file of the real-Envoy tests (tests/python/envoy/als-*.yaml) with its placeholders
/// filled as for the collector: `{"http": [...], "tcp": [...]}`.
fn real_envoy_loggers(file: &str, cluster: &str, authority: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python/envoy")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("${ALS_CLUSTER}", cluster)
        .replace("${ALS_AUTHORITY}", authority);
    let yaml: serde_norway::Value = serde_norway::from_str(&text).expect("logger file is YAML");
    serde_json::to_value(yaml).expect("JSON form")
}

/// What istiod generates for an `envoyHttpAls` / `envoyTcpAls` extension provider
/// (pilot/pkg/model/telemetry_logging.go): envoy_grpc to the Service's outbound cluster with the
/// Service host as authority, V3, the provider's log name, filter state objects and headers.
fn istiod_logger(provider: &Value) -> Value {
    let (kind, p) = if provider["envoyHttpAls"].is_object() {
        ("http", &provider["envoyHttpAls"])
    } else {
        ("tcp", &provider["envoyTcpAls"])
    };
    let service = str_at(p, "/service", "provider");
    let port = p["port"].as_u64().expect("provider port");
    let mut typed = json!({
        "@type": if kind == "http" {
            "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
        } else {
            "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
        },
        "common_config": {
            "log_name": p["logName"],
            "grpc_service": {"envoy_grpc": {
                "cluster_name": format!("outbound|{port}||{service}"),
                "authority": service,
            }},
            "transport_api_version": "V3",
            "filter_state_objects_to_log": p["filterStateObjectsToLog"],
        },
    });
    for (from, to) in [
        (
            "additionalRequestHeadersToLog",
            "additional_request_headers_to_log",
        ),
        (
            "additionalResponseHeadersToLog",
            "additional_response_headers_to_log",
        ),
        (
            "additionalResponseTrailersToLog",
            "additional_response_trailers_to_log",
        ),
    ] {
        if let Some(v) = p.get(from) {
            typed[to] = v.clone();
        }
    }
    json!({
        "name": format!("envoy.access_loggers.{kind}_grpc"),
        "typed_config": typed,
    })
}

/// Istio's default access log format (`EnvoyTextLogFormat`), the body istiod gives an
/// `envoyOtelAls` logger whose provider sets no `logFormat.text`.
const ISTIO_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// What istiod generates for an `envoyOtelAls` provider (pilot/pkg/model/telemetry_logging.go):
/// envoy_grpc to the Service's outbound cluster with the Service host as authority, V3, log
/// name `otel_envoy_accesslog` unless set, `disable_builtin_labels`, the text format (or
/// Istio's default) as the body, the labels as string attributes sorted by key, and the CEL
/// formatter when a label uses `%CEL(..)%`.
fn istiod_otel_logger(provider: &Value) -> Value {
    let p = &provider["envoyOtelAls"];
    let service = str_at(p, "/service", "provider");
    let port = p["port"].as_u64().expect("provider port");
    let labels = p["logFormat"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut keys: Vec<&String> = labels.keys().collect();
    keys.sort();
    let mut typed = json!({
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "common_config": {
            "log_name": p.get("logName").cloned().unwrap_or(json!("otel_envoy_accesslog")),
            "grpc_service": {"envoy_grpc": {
                "cluster_name": format!("outbound|{port}||{service}"),
                "authority": service,
            }},
            "transport_api_version": "V3",
        },
        "disable_builtin_labels": true,
        "body": {"string_value": p["logFormat"].get("text").cloned().unwrap_or(json!(ISTIO_DEFAULT_FORMAT))},
    });
    if !keys.is_empty() {
        typed["attributes"] = json!({"values": keys.iter().map(|k| json!({
            "key": k, "value": {"string_value": labels[k.as_str()]},
        })).collect::<Vec<_>>()});
    }
    if labels
        .values()
        .any(|v| v.as_str().is_some_and(|s| s.contains("%CEL(")))
    {
        typed["formatters"] = json!([{
            "name": "envoy.formatter.cel",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.formatter.cel.v3.Cel"},
        }]);
    }
    json!({"name": "envoy.access_loggers.open_telemetry", "typed_config": typed})
}

/// The real-Envoy tests (tests/python/test_envoy.py) run exactly the loggers deploy/ makes Istio
/// configure: the Telemetry API providers of deploy/istio/mesh-config as istiod renders them,
/// and the EnvoyFilter of deploy/istio/envoyfilter verbatim.
#[test]
fn real_envoy_tests_run_the_loggers_deploy_configures() {
    let c = Collector::load();
    let (_, als_port) = c.service();
    let fqdn = c.service_fqdn();
    let cluster = format!(
        "outbound|{}||{fqdn}",
        als_port["port"].as_u64().expect("port")
    );

    let tested = real_envoy_loggers("als-telemetry-api.yaml", &cluster, &fqdn);
    for provider in extension_providers() {
        if provider.get("envoyOtelAls").is_some() {
            let port = c.otlp_service_port()["port"].as_u64().expect("port");
            let otel =
                real_envoy_loggers("otel-als.yaml", &format!("outbound|{port}||{fqdn}"), &fqdn);
            let generated = istiod_otel_logger(&provider);
            for kind in ["http", "tcp"] {
                assert_eq!(
                    otel[kind],
                    json!([generated]),
                    "tests/python/envoy/otel-als.yaml ({kind}) differs from what istiod makes of provider {}",
                    provider["name"]
                );
            }
            continue;
        }
        let generated = istiod_logger(&provider);
        let kind = if provider["envoyHttpAls"].is_object() {
            "http"
        } else {
            "tcp"
        };
        assert_eq!(
            tested[kind],
            json!([generated]),
            "tests/python/envoy/als-telemetry-api.yaml ({kind}) differs from what istiod makes of provider {}",
            provider["name"]
        );
    }

    let tested = real_envoy_loggers("als-envoyfilter.yaml", &cluster, &fqdn);
    let filter = yaml_doc(&deploy().join("istio/envoyfilter/envoyfilter.yaml"));
    let patches = seq_at(&filter, "/spec/configPatches", "envoyfilter.yaml");
    for (kind, network_filter) in [
        ("http", "envoy.filters.network.http_connection_manager"),
        ("tcp", "envoy.filters.network.tcp_proxy"),
    ] {
        let patch = patches
            .iter()
            .find(|p| {
                p["match"]["listener"]["filterChain"]["filter"]["name"] == json!(network_filter)
            })
            .unwrap_or_else(|| panic!("envoyfilter.yaml patches no {network_filter}"));
        assert_eq!(patch["patch"]["operation"], json!("MERGE"));
        assert_eq!(
            patch["patch"]["value"]["typed_config"]["access_log"],
            tested[kind],
            "deploy/istio/envoyfilter/envoyfilter.yaml ({kind}) differs from tests/python/envoy/als-envoyfilter.yaml"
        );
        for logger in tested[kind].as_array().expect("loggers") {
            let svc = &logger["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"];
            assert_eq!(svc["cluster_name"], json!(cluster));
            assert!(
                svc.get("authority").is_none(),
                "the EnvoyFilter form sets no authority"
            );
        }
    }
}

/// `kubectl kustomize DIR` as JSON values; `None` (with a notice) where kubectl is missing,
/// which CI does not allow.
fn kubectl_render(dir: &Path, test: &str) -> Option<Vec<Value>> {
    let Some(out) = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .ok()
    else {
        assert!(std::env::var_os("CI").is_none(), "kubectl is needed in CI");
        eprintln!("SKIPPED {test}: kubectl not found");
        return None;
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        rel(dir),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(
        serde_norway::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).expect("kustomize output is YAML"))
            .filter(|v| !v.is_null())
            .collect(),
    )
}

/// What the kubelet injects into a pod for one Service with a cluster IP (Kubernetes'
/// documented naming: the name upper-cased, dashes to underscores; `{SVC}_SERVICE_HOST`,
/// `{SVC}_SERVICE_PORT`, `{SVC}_SERVICE_PORT_{PORT NAME}`, and the Docker-links family
/// `{SVC}_PORT`, `{SVC}_PORT_{port}_{PROTO}` and its `_PROTO`, `_PORT`, `_ADDR`).
fn service_link_variables(svc: &Value, ip: &str) -> Vec<(String, String)> {
    let env_name = |s: &str| s.to_ascii_uppercase().replace('-', "_");
    let name = env_name(svc["metadata"]["name"].as_str().expect("Service name"));
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let mut vars = vec![(format!("{name}_SERVICE_HOST"), ip.to_owned())];
    for (i, p) in ports.iter().enumerate() {
        let port = p["port"].as_u64().expect("port number");
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        let url = format!("{}://{host}:{port}", proto.to_ascii_lowercase());
        if i == 0 {
            vars.push((format!("{name}_SERVICE_PORT"), port.to_string()));
            vars.push((format!("{name}_PORT"), url.clone()));
        }
        if let Some(port_name) = p["name"].as_str() {
            vars.push((
                format!("{name}_SERVICE_PORT_{}", env_name(port_name)),
                port.to_string(),
            ));
        }
        let prefix = format!("{name}_PORT_{port}_{proto}");
        vars.push((format!("{prefix}_PROTO"), proto.to_ascii_lowercase()));
        vars.push((format!("{prefix}_PORT"), port.to_string()));
        vars.push((format!("{prefix}_ADDR"), ip.to_owned()));
        vars.push((prefix, url));
    }
    vars
}

/// The rollout that crash-looped: deploy/ creates the Service `meshaudit`, so (with
/// enableServiceLinks on, the Kubernetes default) every later pod in its namespace gets
/// MESHAUDIT_SERVICE_HOST and friends. The real collector starts with every variable Kubernetes
/// would inject for every Service deploy/ defines, in IPv4 and in IPv6 clusters.
#[test]
fn the_collector_starts_with_every_service_link_variable_kubernetes_would_inject() {
    let test = "the_collector_starts_with_every_service_link_variable_kubernetes_would_inject";
    let Some(rendered) = kubectl_render(&deploy(), test) else {
        return;
    };
    let services: Vec<&Value> = rendered
        .iter()
        .filter(|o| o["kind"] == json!("Service") && o["spec"]["clusterIP"] != json!("None"))
        .collect();
    assert!(
        services
            .iter()
            .any(|s| s["metadata"]["name"] == json!("meshaudit")),
        "the render has no Service meshaudit"
    );
    for (family, ips) in [
        (
            "IPv4",
            ["10.96.0.12", "10.96.0.13", "10.96.0.14", "10.96.0.15"],
        ),
        (
            "IPv6",
            [
                "fd00:10:96::c",
                "fd00:10:96::d",
                "fd00:10:96::e",
                "fd00:10:96::f",
            ],
        ),
    ] {
        let mut env: Vec<(String, String)> = services
            .iter()
            .zip(ips.iter().cycle())
            .flat_map(|(svc, ip)| service_link_variables(svc, ip))
            .collect();
        // And what every pod gets for the API server's Service.
        env.extend(service_link_variables(
            &json!({"metadata": {"name": "kubernetes"},
                    "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}),
            ips[0],
        ));
        assert!(
            env.iter().any(|(k, _)| k == "MESHAUDIT_PORT_9000_TCP_ADDR"),
            "{env:?}"
        );
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let data = tempfile::tempdir().expect("tempdir");
        // Panics with the collector's output if it exits instead of answering /readyz.
        let collector = common::Collector::start_with_env(data.path(), &[], &env);
        let (status, output) = collector.stop();
        assert!(status.success(), "{family}: exit {status}:\n{output}");
    }
    // A genuinely misspelled setting still stops it, naming the fix.
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(["serve", "--data-dir", "/nonexistent-never-created"])
        .env("MESHAUDIT_SERVICE_HOST", "10.96.0.12")
        .env("MESHAUDIT_ADMIN_PORT", "9001")
        .output()
        .expect("run meshaudit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown environment variable MESHAUDIT_ADMIN_PORT")
            && stderr.contains("Fix:"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("unknown environment variable MESHAUDIT_SERVICE_HOST"),
        "{stderr}"
    );
}

#[test]
fn helpers_detect_what_the_checks_rely_on() {
    // The checks above pass vacuously if these helpers never match: pin their behaviour.
    assert!(selects(&json!({"a": "1"}), &json!({"a": "1", "b": "2"})));
    assert!(!selects(&json!({"a": "1"}), &json!({"a": "2"})));
    assert!(!selects(&json!({}), &json!({"a": "1"})));
    let flags = help_flags("  --als-addr <HOST:PORT>  Address\n  -h, --help  Print help");
    assert_eq!(
        flags,
        BTreeSet::from(["--als-addr".to_owned(), "--help".to_owned()])
    );
    let mut keys = vec![];
    walk(&json!({"a": [{"bHeadersToLog": ["x"]}]}), &mut |k, _| {
        keys.push(k.to_owned())
    });
    assert_eq!(keys, ["a", "bHeadersToLog"]);
    // An integer map key has no JSON form: yaml_docs refuses it, as kubectl does.
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("x.yaml");
    std::fs::write(&f, "a: 1\n---\nports:\n  9001: {mode: PERMISSIVE}\n").expect("write");
    let refused = std::panic::catch_unwind(|| yaml_docs(&f));
    assert!(refused.is_err(), "an integer map key must be refused");
}

#[test]
fn directory_sync_cronjob_runs_a_real_command_on_the_volume_the_collector_reads() {
    let build = build(&deploy().join("collector-with-directory"));
    let cron = build.one("CronJob");
    let pod = &cron.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let container = &seq_at(pod, "/containers", "CronJob containers")[0];
    let args = strings(container.get("args"));
    assert_eq!(args[..2], ["directory", "sync"], "{args:?}");
    let flags = help_flags(&meshaudit(&["directory", "sync", "--help"]));
    let out_at = args.iter().position(|a| a == "--out").expect("--out");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            flags.contains(a.as_str()),
            "{a} is not a flag of `meshaudit directory sync`"
        );
    }
    let snapshot = &args[out_at + 1];
    // The collector (patched) reads the file the CronJob writes, from the same claim.
    let claim = |pod: &Value, path: &str| -> String {
        let mount = seq_at(pod, "/containers", "containers")
            .iter()
            .flat_map(|c| c["volumeMounts"].as_array().cloned().unwrap_or_default())
            .find(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("?")))
            .unwrap_or_else(|| panic!("no mount holds {path}"));
        let vol = seq_at(pod, "/volumes", "volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("volume")
            .clone();
        str_at(&vol, "/persistentVolumeClaim/claimName", "claim").to_owned()
    };
    let patch = yaml_doc(
        &deploy()
            .join("collector-with-directory")
            .join("collector-directory.yaml"),
    );
    let collector_pod = &patch["spec"]["template"]["spec"];
    let collector_args = strings(collector_pod["containers"][0].get("args"));
    let dir_at = collector_args
        .iter()
        .position(|a| a == "--directory")
        .expect("--directory");
    assert_eq!(&collector_args[dir_at + 1], snapshot);
    assert_eq!(claim(pod, snapshot), claim(collector_pod, snapshot));
    let pvc = build.one("PersistentVolumeClaim");
    assert_eq!(pvc.name(), claim(pod, snapshot));
    assert!(strings(pvc.doc["spec"].get("accessModes")).contains(&"ReadWriteMany".to_owned()));
    assert_eq!(cron.doc["spec"]["concurrencyPolicy"], "Forbid");
}

/// A localhost HTTP server that refuses every request with 403 (the Entra token endpoint and
/// the storage endpoint both), so the collector's start-up write check fails on credentials
/// without contacting anything beyond localhost.
fn refusing_http_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let body = "{\"error\":\"invalid_client\"}";
            let _ = write!(
                s,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// deploy/collector-azure-blob: Parquet to Azure Blob / ADLS Gen2 with workload identity, the
/// volume keeping only the collector's local state (spool, staging), and a URL the real
/// collector accepts: started with it (and workload identity's variables), it gets past config
/// validation and stops at the store's write check, naming --parquet-url and the credentials.
#[test]
fn azure_blob_overlay_writes_parquet_to_the_store_with_workload_identity() {
    let test = "azure_blob_overlay_writes_parquet_to_the_store_with_workload_identity";
    let dir = deploy().join("collector-azure-blob");
    let Some(rendered) = kubectl_render(&dir, test) else {
        return;
    };
    let Some(base) = kubectl_render(&deploy().join("collector"), test) else {
        return;
    };
    let find = |objs: &[Value], kind: &str| -> Value {
        objs.iter()
            .find(|o| o["kind"] == json!(kind) && o["metadata"]["name"] == json!("meshaudit"))
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} meshaudit"))
    };
    let sts = find(&rendered, "StatefulSet");
    let sa = find(&rendered, "ServiceAccount");
    assert!(sa["metadata"]["annotations"]["azure.workload.identity/client-id"].is_string());
    assert_eq!(
        sts.pointer("/spec/template/metadata/labels/azure.workload.identity~1use"),
        Some(&json!("true"))
    );
    assert_eq!(
        sts.pointer("/spec/template/spec/serviceAccountName"),
        Some(&json!("meshaudit"))
    );
    let container = &seq_at(&sts, "/spec/template/spec/containers", "containers")[0];
    let env = seq_at(container, "/env", "env");
    let url = env
        .iter()
        .find(|e| e["name"] == json!("MESHAUDIT_PARQUET_URL"))
        .and_then(|e| e["value"].as_str())
        .expect("MESHAUDIT_PARQUET_URL")
        .to_owned();
    assert!(url.starts_with("abfss://"), "{url}");
    assert!(
        env.iter().any(|e| e["name"] == json!("RUST_LOG")),
        "the patch must merge env, not replace it"
    );

    // The config the pod runs: the base's TOML plus the URL (env beats the file).
    let c = Collector::load();
    let args = strings(container.get("args"));
    let parsed = ServeCli::try_parse_from(
        std::iter::once("meshaudit serve").chain(args[1..].iter().map(String::as_str)),
    )
    .expect("args");
    let cfg = ServeConfig::resolve(ServeOptions {
        config: Some(c.config_file.clone()),
        parquet_url: Some(url.clone()),
        ..parsed.opts
    })
    .unwrap_or_else(|e| panic!("the collector refuses the overlay's parquet_url: {e}"));
    assert_eq!(cfg.parquet_url.as_deref(), Some(url.as_str()));

    // The only persistent volume mount holds the spool and the staging data dir; nothing else
    // of the pod is on a claim, and the claim is smaller than the base's (Parquet leaves it).
    let claims = seq_at(&sts, "/spec/volumeClaimTemplates", "claims");
    assert_eq!(claims.len(), 1);
    let claim_name = claims[0]["metadata"]["name"].clone();
    let mounts: Vec<&Value> = seq_at(container, "/volumeMounts", "mounts")
        .iter()
        .filter(|m| m["name"] == claim_name)
        .collect();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let mount = PathBuf::from(str_at(mounts[0], "/mountPath", "mount"));
    assert!(cfg.spool_dir.starts_with(&mount), "spool not on the claim");
    assert!(cfg.data_dir.starts_with(&mount));
    let gib = |s: &Value| -> u64 {
        let q = str_at(
            s,
            "/spec/volumeClaimTemplates/0/spec/resources/requests/storage",
            "size",
        );
        q.strip_suffix("Gi")
            .and_then(|n| n.parse().ok())
            .expect("size in Gi")
    };
    let base_sts = find(&base, "StatefulSet");
    assert!(
        gib(&sts) < gib(&base_sts),
        "{} vs {}",
        gib(&sts),
        gib(&base_sts)
    );

    // The real collector, with the URL and what the workload identity webhook injects, every
    // endpoint on a localhost server that refuses: a credentials error, not a config error.
    let refuser = refusing_http_server();
    let data = tempfile::tempdir().expect("tempdir");
    let token = data.path().join("azure-identity-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln").expect("token");
    let [als, admin] = common::free_addrs::<2>();
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args([
            "--als-addr",
            &als.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .args(["--otlp-addr", "off"])
        .env("MESHAUDIT_PARQUET_URL", &url)
        .env("AZURE_CLIENT_ID", "00000000-0000-0000-0000-00000000c1d0")
        .env("AZURE_TENANT_ID", "00000000-0000-0000-0000-0000000000a1")
        .env("AZURE_FEDERATED_TOKEN_FILE", &token)
        .env("AZURE_AUTHORITY_HOST", format!("http://{refuser}"))
        .env("AZURE_STORAGE_ENDPOINT", format!("http://{refuser}"))
        .env("AZURE_ALLOW_HTTP", "true")
        .output()
        .expect("run meshaudit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot write to --parquet-url")
            && stderr.contains("AZURE_FEDERATED_TOKEN_FILE")
            && !stderr.contains("invalid --parquet-url")
            && !stderr.contains("invalid setting"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("eyJhbGciOiJSUzI1NiJ9"),
        "the token leaked: {stderr}"
    );
}
