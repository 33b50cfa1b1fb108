import COpenSSL
import CP11Kit
import CShims
import Foundation
import PKCS11
import Synchronization
import TokenStore

/// The content of a server's certificate request: the CA names it accepts, the signature
/// algorithms it accepts and the TLS version of the connection.
struct CertificateRequestInfo {
    /// DER of each X509_NAME the server listed (TLS 1.2 CertificateRequest or TLS 1.3
    /// `certificate_authorities`).
    let authorityNames: [[UInt8]]
    let authorityDescriptions: [String]
    let offersRSAPSS: Bool
    let offersRSAPKCS1: Bool
    let offersECDSA: Bool
    let isTLS13: Bool

    init(ssl: OpaquePointer) {
        var names: [[UInt8]] = []
        var descriptions: [String] = []
        let list = SSL_get0_peer_CA_list(ssl)
        for index in 0..<tokentls_x509_name_stack_count(list) {
            guard let name = tokentls_x509_name_stack_value(list, index) else { continue }
            let length = i2d_X509_NAME(name, nil)
            guard length > 0 else { continue }
            var der = [UInt8](repeating: 0, count: Int(length))
            der.withUnsafeMutableBufferPointer { buffer in
                var pointer: UnsafeMutablePointer<UInt8>? = buffer.baseAddress
                _ = i2d_X509_NAME(name, &pointer)
            }
            names.append(der)
            descriptions.append(Certificate.nameString(of: name))
        }
        authorityNames = names
        authorityDescriptions = descriptions

        var pss = false
        var pkcs1 = false
        var ecdsa = false
        let count = SSL_get_sigalgs(ssl, -1, nil, nil, nil, nil, nil)
        for index in 0..<max(count, 0) {
            var sign: Int32 = 0
            _ = SSL_get_sigalgs(ssl, index, &sign, nil, nil, nil, nil)
            switch sign {
            case EVP_PKEY_RSA_PSS: pss = true
            case EVP_PKEY_RSA: pkcs1 = true
            case EVP_PKEY_EC: ecdsa = true
            default: break
            }
        }
        // A request without signature algorithms limits nothing.
        let none = count <= 0
        offersRSAPSS = pss || none
        offersRSAPKCS1 = pkcs1 || none
        offersECDSA = ecdsa || none
        isTLS13 = SSL_version(ssl) >= TLS1_3_VERSION
    }
}

/// Picks the client identity for a connection the way a browser does, when the caller
/// names none.
///
/// Among the token's identities with a private key it keeps those whose chain (through
/// the CA certificates in the token) reaches a CA the server lists, that are valid now,
/// whose extended key usage allows client authentication, and whose key the token can
/// sign with under a scheme the server accepts. The latest expiry wins, then the latest
/// start. When the server lists no CA, or nothing fits, no certificate is sent.
/// The token is opened (and the PIN read) only when a server first asks for a certificate.
public final class AutomaticSelection: Sendable {
    private struct Candidate {
        let identity: Identity
        /// DER names of every CA above the certificate that the token contains.
        let chainNames: Set<[UInt8]>
        let mechanisms: Set<UInt>
    }

    private struct State {
        var store: TokenStore?
        var candidates: [Candidate]?
        var prepared: [String: ClientIdentity] = [:]
        var report: [String] = []
    }

    private let openStore: @Sendable () throws -> TokenStore
    private let token: Token?
    private let state = Mutex(State())

    /// `openStore` opens the logged-in store. It runs on the first certificate request
    /// that some certificate in the token can serve, and again on a later one only if
    /// it threw. With `token`, the certificates (public objects) are checked first
    /// without logging in, so a server that no identity fits never causes a PIN prompt.
    public init(token: Token? = nil, openStore: @escaping @Sendable () throws -> TokenStore) {
        self.token = token
        self.openStore = openStore
    }

    /// The reasons of the most recent choice: which identity was chosen and why the others were not.
    public var report: [String] { state.withLock { $0.report } }

    func choose(for request: CertificateRequestInfo) throws -> ClientIdentity? {
        try state.withLock { state in
            var report: [String] = []
            defer { state.report = report }
            guard !request.authorityNames.isEmpty else {
                report.append("the server listed no certificate authorities, so no client certificate is sent")
                return nil
            }
            let listed = Set(request.authorityNames)
            let accepted = request.authorityDescriptions.joined(separator: "; ")
            let now = Date()
            if state.candidates == nil, let token {
                let reasons = try rejectionsBeforeLogin(token, request: request, listed: listed, accepted: accepted, now: now)
                if let reasons {
                    report += reasons
                    report.append(
                        "no identity in the token fits this server, so no client certificate is sent (no login was needed)")
                    return nil
                }
            }
            let candidates = try prepareCandidates(&state)
            var eligible: [Candidate] = []
            for candidate in candidates {
                let certificate = candidate.identity.certificate
                let name = "\(candidate.identity.thumbprint) (\(certificate.subject))"
                if let reason = rejection(
                    certificate, chainNames: candidate.chainNames, mechanisms: candidate.mechanisms, request: request,
                    listed: listed,
                    accepted: accepted, now: now)
                {
                    report.append("skipped \(name): \(reason)")
                } else {
                    eligible.append(candidate)
                }
            }
            eligible.sort {
                ($0.identity.certificate.notAfter, $0.identity.certificate.notBefore)
                    > ($1.identity.certificate.notAfter, $1.identity.certificate.notBefore)
            }
            guard let winner = eligible.first else {
                report.append("no identity in the token fits this server, so no client certificate is sent")
                return nil
            }
            for other in eligible.dropFirst() {
                report.append(
                    "skipped \(other.identity.thumbprint) (\(other.identity.certificate.subject)): it expires earlier than the chosen one"
                )
            }
            report.insert(
                "chose \(winner.identity.thumbprint) (\(winner.identity.certificate.subject)): issued under a CA the server lists, "
                    + "valid now, latest expiry among \(eligible.count) eligible", at: 0)
            if let prepared = state.prepared[winner.identity.thumbprint] {
                return prepared
            }
            guard let store = state.store else { return nil }
            let identity = try ClientIdentity(store: store, identity: winner.identity)
            state.prepared[winner.identity.thumbprint] = identity
            return identity
        }
    }

    private func prepareCandidates(_ state: inout State) throws -> [Candidate] {
        if let candidates = state.candidates {
            return candidates
        }
        let store = try openStore()
        let tokenMechanisms = try store.token.mechanisms()
        var candidates: [Candidate] = []
        // One listing serves every chain: listing the token per identity grew with the
        // square of the identity count.
        let identities = try store.identities()
        let known = identities.map(\.certificate) + (try TrustStore(token: store.token).anchors().map(\.certificate))
        for identity in identities where identity.hasPrivateKey {
            let chain = TokenStore.authorityChain(for: identity.certificate, among: known)
            var names: Set<[UInt8]> = [identity.certificate.issuerDER]
            for authority in chain {
                names.insert(authority.subjectDER)
                names.insert(authority.issuerDER)
            }
            let mechanisms =
                identity.allowedMechanisms.isEmpty ? tokenMechanisms : tokenMechanisms.intersection(identity.allowedMechanisms)
            candidates.append(Candidate(identity: identity, chainNames: names, mechanisms: mechanisms))
        }
        state.store = store
        state.candidates = candidates
        return candidates
    }

    /// Checks the token's certificates without logging in. Returns the reason for each
    /// when none can serve the request, or nil when at least one can.
    private func rejectionsBeforeLogin(
        _ token: Token, request: CertificateRequestInfo, listed: Set<[UInt8]>, accepted: String, now: Date
    ) throws -> [String]? {
        let certificates = try TokenStore.publicCertificates(on: token)
        let authorities = (certificates + (try TrustStore(token: token).anchors().map(\.certificate))).filter(\.isCA)
        let mechanisms = try token.mechanisms()
        var reasons: [String] = []
        for certificate in certificates where !certificate.isCA {
            var names: Set<[UInt8]> = [certificate.issuerDER]
            var current = certificate
            var seen: Set<[UInt8]> = []
            while let issuer = authorities.first(where: { $0.subjectDER == current.issuerDER && !seen.contains($0.der) }) {
                seen.insert(issuer.der)
                names.insert(issuer.subjectDER)
                names.insert(issuer.issuerDER)
                current = issuer
            }
            guard
                let reason = rejection(
                    certificate, chainNames: names, mechanisms: mechanisms, request: request, listed: listed, accepted: accepted,
                    now: now)
            else {
                return nil
            }
            reasons.append("skipped \(certificate.sha1Thumbprint) (\(certificate.subject)): \(reason)")
        }
        return reasons
    }

    /// Returns the reason `certificate` cannot serve this request, or nil when it can.
    private func rejection(
        _ certificate: Certificate, chainNames: Set<[UInt8]>, mechanisms: Set<UInt>, request: CertificateRequestInfo,
        listed: Set<[UInt8]>, accepted: String, now: Date
    ) -> String? {
        let formatter = ISO8601DateFormatter()
        if certificate.notAfter < now {
            return "expired on \(formatter.string(from: certificate.notAfter))"
        }
        if certificate.notBefore > now {
            return "not valid before \(formatter.string(from: certificate.notBefore))"
        }
        if !certificate.allowsClientAuthentication {
            return "its extended key usage does not allow client authentication"
        }
        if chainNames.isDisjoint(with: listed) {
            return "issued under \(certificate.issuer), which the server does not list (it accepts \(accepted))"
        }
        switch certificate.keyType {
        case .rsa:
            let pss = mechanisms.contains(UInt(CKM_RSA_PKCS_PSS)) && request.offersRSAPSS
            let pkcs1 = mechanisms.contains(UInt(CKM_RSA_PKCS)) && request.offersRSAPKCS1 && !request.isTLS13
            if !pss && !pkcs1 {
                return request.isTLS13 && !mechanisms.contains(UInt(CKM_RSA_PKCS_PSS))
                    ? "TLS 1.3 needs RSA-PSS, which the token cannot make with this key"
                    : "the server accepts no RSA signature scheme the token can make"
            }
        case .ec:
            if !(mechanisms.contains(UInt(CKM_ECDSA)) && request.offersECDSA) {
                return "the server accepts no ECDSA signature the token can make"
            }
        case .other:
            return "its key type cannot sign TLS handshakes"
        }
        return nil
    }
}
