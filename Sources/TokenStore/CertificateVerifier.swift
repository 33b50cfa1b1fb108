import COpenSSL
import CShims
import Foundation

/// What a certificate is checked for, as Windows' `Test-Certificate -Policy SSL` does.
public enum VerificationPolicy: String, Sendable {
    case sslClient = "ssl-client"
    case sslServer = "ssl-server"

    var purpose: Int32 {
        switch self {
        case .sslClient: X509_PURPOSE_SSL_CLIENT
        case .sslServer: X509_PURPOSE_SSL_SERVER
        }
    }
}

/// The outcome of a verification: the chain OpenSSL built and every problem found.
public struct VerificationResult: Sendable {
    /// The certificate first, its trust anchor last, as far as a chain could be built.
    public let chain: [Certificate]
    /// One sentence per problem; empty when the certificate is valid.
    public let problems: [String]
    public var isValid: Bool { problems.isEmpty }
}

/// Chain building and checking with OpenSSL against the root store.
///
/// The trust anchors are the root store's certificates, plus the system CA bundle
/// unless `useSystemRoots` is false. Intermediate CA certificates (from the token or
/// the file being checked) help build the chain but are not trusted themselves.
public struct CertificateVerifier: Sendable {
    public var anchors: [Certificate]
    public var intermediates: [Certificate]
    public var useSystemRoots: Bool

    public init(anchors: [Certificate], intermediates: [Certificate] = [], useSystemRoots: Bool = true) {
        self.anchors = anchors
        self.intermediates = intermediates
        self.useSystemRoots = useSystemRoots
    }

    /// Checks validity dates, basic constraints, key usage and extended key usage for
    /// `policy`, and the DNS name when one is given. Every problem is collected rather
    /// than stopping at the first.
    public func verify(_ certificate: Certificate, policy: VerificationPolicy, dnsName: String? = nil) throws
        -> VerificationResult
    {
        OpenSSLErrorQueue.clear()
        guard let store = X509_STORE_new() else {
            throw TokenStoreError(.openSSL, "allocating a certificate store failed")
        }
        defer { X509_STORE_free(store) }
        if useSystemRoots {
            X509_STORE_set_default_paths(store)
        }
        for anchor in anchors {
            try anchor.withX509 { _ = X509_STORE_add_cert(store, $0) }
        }
        guard let untrusted = tokentls_x509_stack_new() else {
            throw TokenStoreError(.openSSL, "allocating a certificate list failed")
        }
        defer { tokentls_x509_stack_free_all(untrusted) }
        for intermediate in intermediates {
            try intermediate.withX509 { x509 in
                X509_up_ref(x509)
                if tokentls_x509_stack_push(untrusted, x509) != 1 {
                    X509_free(x509)
                }
            }
        }

        return try certificate.withX509 { leaf in
            guard let context = X509_STORE_CTX_new() else {
                throw TokenStoreError(.openSSL, "allocating a verification context failed")
            }
            defer { X509_STORE_CTX_free(context) }
            guard X509_STORE_CTX_init(context, store, leaf, untrusted) == 1 else {
                throw TokenStoreError(.openSSL, "starting the verification failed: \(OpenSSLErrorQueue.drain())")
            }
            let parameters = X509_STORE_CTX_get0_param(context)
            X509_VERIFY_PARAM_set_purpose(parameters, policy.purpose)
            if let dnsName {
                X509_VERIFY_PARAM_set1_host(parameters, dnsName, dnsName.utf8.count)
            }
            let collector = ProblemCollector(dnsName: dnsName, policy: policy)
            let box = Unmanaged.passRetained(collector)
            defer { box.release() }
            X509_STORE_CTX_set_ex_data(context, 0, box.toOpaque())
            X509_STORE_CTX_set_verify_cb(context, collectProblem)
            let verified = X509_verify_cert(context)
            if verified != 1 && collector.problems.isEmpty {
                collector.problems.append("verification failed: \(OpenSSLErrorQueue.drain())")
            }
            var chain: [Certificate] = []
            if let built = X509_STORE_CTX_get1_chain(context) {
                defer { tokentls_x509_stack_free_all(built) }
                for index in 0..<tokentls_x509_stack_count(built) {
                    if let x509 = tokentls_x509_stack_value(built, index) {
                        chain.append(try Certificate(x509: x509))
                    }
                }
            }
            OpenSSLErrorQueue.clear()
            return VerificationResult(chain: chain, problems: collector.problems)
        }
    }
}

/// The problems one verification found, filled by the OpenSSL verify callback.
private final class ProblemCollector {
    let dnsName: String?
    let policy: VerificationPolicy
    var problems: [String] = []

    init(dnsName: String?, policy: VerificationPolicy) {
        self.dnsName = dnsName
        self.policy = policy
    }

    func record(code: Int32, certificate: OpaquePointer?) {
        let subject = certificate.map { Certificate.nameString(X509_get_subject_name($0)) } ?? "the certificate"
        let issuer = certificate.map { Certificate.nameString(X509_get_issuer_name($0)) } ?? "its issuer"
        let problem: String
        switch code {
        case X509_V_ERR_CERT_HAS_EXPIRED:
            problem = "\(subject): expired on \(Self.notAfter(certificate))"
        case X509_V_ERR_CERT_NOT_YET_VALID:
            problem = "\(subject): not valid before \(Self.notBefore(certificate))"
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
            problem =
                "\(subject): its issuer \(issuer) is not in the root store or the token; add it with 'tokentls trust add FILE'"
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
            problem = "\(subject): self-signed and not in the root store; add it with 'tokentls trust add FILE' if you trust it"
        case X509_V_ERR_INVALID_PURPOSE:
            problem = "\(subject): its key usage or extended key usage does not allow \(policy.rawValue)"
        case X509_V_ERR_HOSTNAME_MISMATCH:
            problem = "\(subject): not valid for the DNS name \(dnsName ?? "")"
        case X509_V_ERR_INVALID_CA:
            problem = "\(subject): used as a CA but it is not one (basic constraints)"
        default:
            problem = "\(subject): " + String(cString: X509_verify_cert_error_string(Int(code)))
        }
        if !problems.contains(problem) {
            problems.append(problem)
        }
    }

    private static func notAfter(_ certificate: OpaquePointer?) -> String {
        guard let certificate, let der = try? Certificate(x509: certificate) else { return "an unknown date" }
        return ISO8601DateFormatter().string(from: der.notAfter)
    }

    private static func notBefore(_ certificate: OpaquePointer?) -> String {
        guard let certificate, let der = try? Certificate(x509: certificate) else { return "an unknown date" }
        return ISO8601DateFormatter().string(from: der.notBefore)
    }
}

/// Records every failure and lets OpenSSL go on, so that all problems are reported.
private func collectProblem(_ ok: Int32, _ context: OpaquePointer?) -> Int32 {
    guard ok == 0, let context, let pointer = X509_STORE_CTX_get_ex_data(context, 0) else {
        return ok
    }
    let collector = Unmanaged<ProblemCollector>.fromOpaque(pointer).takeUnretainedValue()
    collector.record(code: X509_STORE_CTX_get_error(context), certificate: X509_STORE_CTX_get_current_cert(context))
    return 1
}
