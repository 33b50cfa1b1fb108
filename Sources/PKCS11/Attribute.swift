import CP11Kit

/// One attribute of a template: a `CKA_` type and its value.
public struct Attribute: Sendable {
    public enum Value: Sendable {
        case bool(Bool)
        case ulong(UInt)
        case bytes([UInt8])
        /// Key material: copied into the template buffer and wiped from it after the call.
        case secret(SecretBytes)
    }

    public let type: UInt
    public let value: Value

    public init(_ type: UInt, _ value: Value) {
        self.type = type
        self.value = value
    }

    public static func bool(_ type: UInt, _ value: Bool) -> Attribute { Attribute(type, .bool(value)) }
    public static func ulong(_ type: UInt, _ value: UInt) -> Attribute { Attribute(type, .ulong(value)) }
    public static func bytes(_ type: UInt, _ value: [UInt8]) -> Attribute { Attribute(type, .bytes(value)) }
    public static func string(_ type: UInt, _ value: String) -> Attribute { Attribute(type, .bytes(Array(value.utf8))) }
    public static func secret(_ type: UInt, _ value: SecretBytes) -> Attribute { Attribute(type, .secret(value)) }
}

/// Builds a `CK_ATTRIBUTE` array for the duration of `body`.
///
/// Every value is copied into one buffer that is zeroed and freed afterwards, so
/// key material passed as `.secret` leaves no copy behind.
@discardableResult
func withTemplate<Result>(
    _ attributes: [Attribute],
    _ body: (UnsafeMutablePointer<CK_ATTRIBUTE>?, CK_ULONG) throws -> Result
) rethrows -> Result {
    var sizes: [Int] = []
    for attribute in attributes {
        switch attribute.value {
        case .bool: sizes.append(MemoryLayout<CK_BBOOL>.size)
        case .ulong: sizes.append(MemoryLayout<CK_ULONG>.size)
        case .bytes(let bytes): sizes.append(bytes.count)
        case .secret(let secret): sizes.append(secret.count)
        }
    }
    let alignment = MemoryLayout<CK_ULONG>.alignment
    let total = sizes.reduce(0) { $0 + ($1 + alignment - 1) / alignment * alignment }
    let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: alignment)
    defer {
        SecretBytes.clear(storage)
        storage.deallocate()
    }
    let template = UnsafeMutablePointer<CK_ATTRIBUTE>.allocate(capacity: max(attributes.count, 1))
    defer { template.deallocate() }

    var offset = 0
    for (index, attribute) in attributes.enumerated() {
        let destination = storage.baseAddress! + offset
        switch attribute.value {
        case .bool(let value):
            destination.storeBytes(of: CK_BBOOL(value ? 1 : 0), as: CK_BBOOL.self)
        case .ulong(let value):
            destination.storeBytes(of: CK_ULONG(value), as: CK_ULONG.self)
        case .bytes(let bytes):
            bytes.withUnsafeBytes { source in
                if source.count > 0 { destination.copyMemory(from: source.baseAddress!, byteCount: source.count) }
            }
        case .secret(let secret):
            secret.withUnsafeBytes { source in
                if source.count > 0 { destination.copyMemory(from: source.baseAddress!, byteCount: source.count) }
            }
        }
        template[index] = CK_ATTRIBUTE(
            type: CK_ATTRIBUTE_TYPE(attribute.type),
            pValue: sizes[index] == 0 ? nil : destination,
            ulValueLen: CK_ULONG(sizes[index]))
        offset += (sizes[index] + alignment - 1) / alignment * alignment
    }
    return try body(template, CK_ULONG(attributes.count))
}

/// Decodes a `CK_ULONG` attribute value in host byte order.
public func ulongValue(_ bytes: [UInt8]?) -> UInt? {
    guard let bytes, bytes.count == MemoryLayout<CK_ULONG>.size else {
        return nil
    }
    return UInt(bytes.withUnsafeBytes { $0.loadUnaligned(as: CK_ULONG.self) })
}

/// Decodes a `CK_BBOOL` attribute value.
public func boolValue(_ bytes: [UInt8]?) -> Bool? {
    guard let bytes, bytes.count == 1 else {
        return nil
    }
    return bytes[0] != 0
}
