import PKCS11

/// A certificate in the token and, when present, its private and public key objects,
/// all sharing one `CKA_ID`.
public struct Identity: Sendable {
    public let certificate: Certificate
    /// The `CKA_ID` shared by the certificate and its key objects.
    public let id: [UInt8]
    /// The certificate object's `CKA_LABEL`.
    public let label: String
    public let certificateObject: ObjectHandle
    public let privateKeyObject: ObjectHandle?
    public let publicKeyObject: ObjectHandle?
    /// The private key's `CKA_EXTRACTABLE`, or nil without a private key.
    public let isExportable: Bool?
    /// The private key's `CKA_ALLOWED_MECHANISMS`; empty when the token sets no limit.
    public let allowedMechanisms: Set<UInt>
    let token: Token

    public var hasPrivateKey: Bool { privateKeyObject != nil }
    public var thumbprint: String { certificate.sha1Thumbprint }

    /// The PKCS#11 URI of the certificate object.
    public var certificateURI: String {
        objectURI(.certificate)
    }

    /// The PKCS#11 URI of the private key object, or nil when there is none.
    public var privateKeyURI: String? {
        hasPrivateKey ? objectURI(.privateKey) : nil
    }

    private func objectURI(_ type: PKCS11URI.ObjectClass) -> String {
        var uri = PKCS11URI(
            token: token.label, manufacturer: token.manufacturer, model: token.model, serial: token.serial,
            object: label.isEmpty ? nil : label, id: id, type: type)
        uri.modulePath = nil
        return uri.description
    }
}

/// The outcome of an import.
public enum ImportResult: Sendable {
    /// The identity was written; `createdObjects` counts the new token objects.
    case imported(Identity, createdObjects: Int)
    /// The certificate and its private key were already in the token; nothing was written.
    case alreadyPresent(Identity)

    public var identity: Identity {
        switch self {
        case .imported(let identity, _), .alreadyPresent(let identity): identity
        }
    }
}
