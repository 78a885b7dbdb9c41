// vcsim-lab: govmomi's vCenter simulator for the agent's conformance suite.
//
// Starts simulator.VPX() over TLS on 127.0.0.1:0, prints the SDK URL (with the
// simulator's credentials) on the first stdout line and the server certificate's SHA-1
// thumbprint (AA:BB:… as vCenter shows it) on the second, and serves until stdin closes.
package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
)

func main() {
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword("user", "pass")}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned()}}
	model.Service.RegisterEndpoints = true
	server := model.Service.NewServer()
	fmt.Println(server.URL.String())
	sum := sha1.Sum(server.Certificate().Raw)
	thumbprint := ""
	for i, b := range sum {
		if i > 0 {
			thumbprint += ":"
		}
		thumbprint += fmt.Sprintf("%02X", b)
	}
	fmt.Println(thumbprint)
	_, _ = io.Copy(io.Discard, os.Stdin)
	server.Close()
	model.Remove()
}

// selfSigned makes a fresh RSA-2048 certificate for 127.0.0.1, like a vCenter's
// self-signed one. (httptest's built-in certificate has a 1024-bit key in older Go
// releases, which modern TLS stacks such as rustls/ring refuse.)
func selfSigned() tls.Certificate {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		log.Fatal(err)
	}
	template := x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "vcsim-lab"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
