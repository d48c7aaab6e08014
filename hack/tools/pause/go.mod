// The pod sandbox ("pause") program of the test node's images; no dependencies.
// Built by hack/images-build.sh (CGO_ENABLED=0, static) into the image localhost/scalable/pause.
module scalable-operator/hack/tools/pause

go 1.26
