/// Hexadecimal text of `bytes`, upper case without separators, as Windows prints thumbprints.
public func hexString(_ bytes: [UInt8], uppercase: Bool = true) -> String {
    let digits = Array((uppercase ? "0123456789ABCDEF" : "0123456789abcdef").utf8)
    var text = [UInt8]()
    text.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 0x0f)])
    }
    return String(decoding: text, as: UTF8.self)
}

/// Parses hexadecimal text, ignoring blanks and colons as Windows and OpenSSL show them,
/// and the invisible left-to-right mark (U+200E) that the Windows certificate dialog
/// puts before a copied thumbprint. Returns nil for any other character or an odd
/// number of digits.
public func bytes(fromHex text: String) -> [UInt8]? {
    var result: [UInt8] = []
    var high: UInt8?
    for scalar in text.unicodeScalars {
        guard let value = hexDigitValue(scalar) else {
            if scalar == " " || scalar == ":" || scalar == "\t" || scalar == "\u{200E}" {
                continue
            }
            return nil
        }
        if let first = high {
            result.append(first << 4 | value)
            high = nil
        } else {
            high = value
        }
    }
    return high == nil ? result : nil
}

private func hexDigitValue(_ scalar: Unicode.Scalar) -> UInt8? {
    switch scalar {
    case "0"..."9": UInt8(scalar.value - 48)
    case "a"..."f": UInt8(scalar.value - 97 + 10)
    case "A"..."F": UInt8(scalar.value - 65 + 10)
    default: nil
    }
}

/// The text of a NUL-terminated C string held in an array.
func string(fromCString characters: [CChar]) -> String {
    let bytes = characters.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}
