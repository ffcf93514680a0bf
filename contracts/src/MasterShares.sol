// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title MasterShares
/// @notice One ERC-721 collection per master recording; each token is one share.
/// @dev Reference implementation for the AudiFi indexer (SPEC section 2). Emits only the standard
///      ERC-721 `Transfer(address indexed from, address indexed to, uint256 indexed tokenId)`.
contract MasterShares is ERC721, Ownable {
    constructor(string memory name_, string memory symbol_, address owner_)
        ERC721(name_, symbol_)
        Ownable(owner_)
    {}

    /// @notice Mint one share (owner only).
    function mint(address to, uint256 tokenId) external onlyOwner {
        _mint(to, tokenId);
    }

    /// @notice Mint `count` consecutive shares starting at `firstTokenId` (owner only).
    function batchMint(address to, uint256 firstTokenId, uint256 count) external onlyOwner {
        for (uint256 i = 0; i < count; ++i) {
            _mint(to, firstTokenId + i);
        }
    }

    /// @notice Burn a share. Allowed for the contract owner, the holder, or an approved operator.
    function burn(uint256 tokenId) external {
        if (msg.sender == owner()) {
            _burn(tokenId);
        } else {
            // auth = msg.sender: reverts unless holder / approved / operator.
            _update(address(0), tokenId, msg.sender);
        }
    }
}
