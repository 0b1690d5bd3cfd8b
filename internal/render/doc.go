// Package render turns a KarsSandbox and the policies it references into the
// objects that realise it: the router's compiled configuration, a
// ServiceAccount, the hardened Deployment (egress guard, agent as UID 1000,
// router as UID 1001), the router's Service and the NetworkPolicy.
//
// Everything here is a pure function of its inputs: no client, no clock, no
// randomness. Values that are not pure (the router's admin credentials, the
// verified digest of a BYO image, the current time for A2A expiry) are
// produced by the controller and passed in through Input. That is what lets
// the same rendered sandbox feed both substrates — the Kubernetes substrate
// applies the objects, the local substrate of `kars dev` realises the
// Deployment's PodSpec as local processes — and what lets golden files pin
// the exact pod shape.
//
// This package must not import controller-runtime clients or any network
// package.
package render
