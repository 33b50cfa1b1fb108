import CCurl
import Foundation

extension HTTPClient {
    /// Turns a failed transfer into an error that names what happened and what to do.
    static func describe(
        _ code: CURLcode, curlMessage: String, request: HTTPRequest, identity: ClientIdentity?, serverVerification: String?
    ) -> TLSError {
        let detail = curlMessage.isEmpty ? String(cString: curl_easy_strerror(code)) : curlMessage
        if let signingError = identity?.lastSigningError {
            return TLSError(
                .handshake, "the TLS handshake with \(request.url) failed because the token could not sign: \(signingError)")
        }
        switch code {
        case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE:
            if let serverVerification, !detail.contains("subject name"), !detail.contains("host name") {
                return TLSError(
                    .serverCertificate, "the server certificate of \(request.url) is not trusted: \(serverVerification)")
            }
            return TLSError(.serverCertificate, serverCertificateMessage(detail, request: request))
        case CURLE_COULDNT_RESOLVE_HOST:
            return TLSError(
                .connection,
                "cannot resolve the host of \(request.url): \(detail); check the name or add --resolve HOST:PORT:ADDRESS")
        case CURLE_COULDNT_CONNECT:
            return TLSError(
                .connection, "cannot connect to \(request.url): \(detail); check that the server is running and the port is right"
            )
        case CURLE_OPERATION_TIMEDOUT:
            return TLSError(.connection, "request to \(request.url) timed out: \(detail); raise --connect-timeout or --max-time")
        case CURLE_URL_MALFORMAT, CURLE_UNSUPPORTED_PROTOCOL:
            return TLSError(.request, "invalid URL \"\(request.url)\": \(detail)")
        case CURLE_GOT_NOTHING, CURLE_SEND_ERROR:
            return TLSError(.connection, "the server at \(request.url) closed the connection: \(detail)")
        case CURLE_SSL_CONNECT_ERROR, CURLE_RECV_ERROR, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER:
            let closed = ["Connection reset", "unexpected eof", "SSL_ERROR_SYSCALL"].contains { detail.contains($0) }
            if closed, !detail.contains("alert") {
                return TLSError(
                    .connection,
                    "the server at \(request.url) closed the connection during the TLS handshake: \(detail); check that it speaks TLS on this port"
                )
            }
            if let alert = alertExplanation(detail, identity: identity) {
                return TLSError(.handshake, "the server at \(request.url) rejected the TLS handshake: \(alert)")
            }
            if code == CURLE_RECV_ERROR {
                return TLSError(.connection, "receiving from \(request.url) failed: \(detail)")
            }
            return TLSError(.handshake, "the TLS handshake with \(request.url) failed: \(detail)")
        default:
            return TLSError(.connection, "request to \(request.url) failed: \(detail)")
        }
    }

    private static func serverCertificateMessage(_ detail: String, request: HTTPRequest) -> String {
        if detail.contains("subject name") || detail.contains("host name") {
            return
                "the server certificate of \(request.url) is not valid for its host name (\(detail)); use the name the certificate lists"
        }
        return
            "the server certificate of \(request.url) is not trusted (\(detail)); add its CA with 'tokentls trust add FILE' or --cacert FILE"
    }

    /// Explains a TLS alert named in an OpenSSL message, such as "tlsv1 alert unknown ca".
    private static func alertExplanation(_ detail: String, identity: ClientIdentity?) -> String? {
        let explanations: [(alert: String, meaning: String)] = [
            ("unknown ca", "alert 'unknown ca': the server does not trust the CA that issued the client certificate"),
            ("certificate expired", "alert 'certificate expired': the client certificate (or a CA above it) has expired"),
            ("certificate revoked", "alert 'certificate revoked': the client certificate was revoked"),
            ("bad certificate", "alert 'bad certificate': the server could not verify the client certificate"),
            (
                "unsupported certificate",
                "alert 'unsupported certificate': the server does not accept this kind of client certificate"
            ),
            ("certificate unknown", "alert 'certificate unknown': the server did not accept the client certificate"),
            (
                "certificate required",
                "alert 'certificate required': the server requires a client certificate and none was sent; choose one with --thumbprint or --key-uri"
            ),
            ("decrypt error", "alert 'decrypt error': the server could not verify the token's signature"),
            ("access denied", "alert 'access denied': the server refused this client"),
            ("handshake failure", "alert 'handshake failure': no common signature scheme, cipher or protocol setting"),
        ]
        if detail.contains("alert protocol version") || detail.contains("unsupported protocol")
            || detail.contains("no protocols available")
        {
            if let identity, !identity.supportsTLS13 {
                return
                    "the server requires a TLS version this client does not offer; with \(identity.identity.thumbprint) only TLS 1.2 is possible, because the token cannot make RSA-PSS signatures, which TLS 1.3 requires (\(detail))"
            }
            return "the server and client share no TLS version (\(detail)); adjust --tlsv1.2, --tlsv1.3 or --tls-max"
        }
        for entry in explanations where detail.contains(entry.alert) {
            return entry.meaning + " (\(detail))"
        }
        return nil
    }
}
