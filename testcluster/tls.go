package testcluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certs is an ephemeral CA with one server and one client certificate, made
// in-process for a cluster's lifetime. embed reads certificates from files, so
// they are also written to the cluster's temp folder.
type certs struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	client                                               *tls.Config
}

func makeCerts(dir string) (*certs, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "concord testcluster CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	leaf := func(serial int64, cn string, usage ...x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey, error) {
		return issueLeaf(ca, caKey, now, serial, cn, usage)
	}
	// Both leaves carry both usages: etcd members also act as clients of each
	// other (the gRPC gateway and peer-forwarded requests).
	serverDER, serverKey, err := leaf(2, "concord testcluster member", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	// The client certificate's CN is not a user name in the cluster, so a
	// request that carries no password token is not authorised by it.
	clientDER, clientKey, err := leaf(3, "concord testcluster client", x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}

	c := &certs{
		caFile:     filepath.Join(dir, "ca.pem"),
		serverCert: filepath.Join(dir, "server.pem"),
		serverKey:  filepath.Join(dir, "server-key.pem"),
		clientCert: filepath.Join(dir, "client.pem"),
		clientKey:  filepath.Join(dir, "client-key.pem"),
	}
	if err := c.write(caDER, serverDER, serverKey, clientDER, clientKey); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	c.client = &tls.Config{
		RootCAs:    pool,
		MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{{
			Certificate: [][]byte{clientDER},
			PrivateKey:  clientKey,
		}},
	}
	return c, nil
}

// issueLeaf makes a key and a certificate for it, signed by ca, for
// loopback.
func issueLeaf(ca *x509.Certificate, caKey *ecdsa.PrivateKey, now time.Time, serial int64, cn string, usage []x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	return der, key, err
}

// write writes the certificates and keys to c's files, as PEM.
func (c *certs) write(caDER, serverDER []byte, serverKey *ecdsa.PrivateKey, clientDER []byte, clientKey *ecdsa.PrivateKey) error {
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		b, _ := x509.MarshalECPrivateKey(k)
		return b
	}
	for _, w := range []struct {
		path, typ string
		der       []byte
	}{
		{c.caFile, "CERTIFICATE", caDER},
		{c.serverCert, "CERTIFICATE", serverDER},
		{c.serverKey, "EC PRIVATE KEY", keyDER(serverKey)},
		{c.clientCert, "CERTIFICATE", clientDER},
		{c.clientKey, "EC PRIVATE KEY", keyDER(clientKey)},
	} {
		if err := os.WriteFile(w.path, pem.EncodeToMemory(&pem.Block{Type: w.typ, Bytes: w.der}), 0o600); err != nil {
			return fmt.Errorf("testcluster: write %s: %w", w.path, err)
		}
	}
	return nil
}
