// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {MasterShares} from "./MasterShares.sol";

/// @title MasterRegistry
/// @notice Maps AudiFi master ids (database UUID as bytes16) to their MasterShares contract.
contract MasterRegistry is Ownable {
    event MasterRegistered(bytes16 indexed masterId, address indexed contractAddress);

    mapping(bytes16 => address) public masters;

    constructor(address owner_) Ownable(owner_) {}

    /// @notice Register an existing shares contract for `masterId` (owner only).
    function registerMaster(bytes16 masterId, address contractAddress) external onlyOwner {
        _register(masterId, contractAddress);
    }

    /// @notice Deploy a new MasterShares (owned by the caller) and register it in the same
    ///         transaction. Owner only.
    function deployMaster(bytes16 masterId, string calldata name, string calldata symbol)
        external
        onlyOwner
        returns (address)
    {
        MasterShares shares = new MasterShares(name, symbol, msg.sender);
        _register(masterId, address(shares));
        return address(shares);
    }

    /// @notice Like deployMaster, and also mint `count` shares (ids from `firstTokenId`) to `to`
    ///         in the same transaction: the Transfer logs follow MasterRegistered (higher log
    ///         index). The caller owns the shares contract afterwards. Owner only.
    function deployMasterAndMint(
        bytes16 masterId,
        string calldata name,
        string calldata symbol,
        address to,
        uint256 firstTokenId,
        uint256 count
    ) external onlyOwner returns (address) {
        MasterShares shares = new MasterShares(name, symbol, address(this));
        _register(masterId, address(shares));
        shares.batchMint(to, firstTokenId, count);
        shares.transferOwnership(msg.sender);
        return address(shares);
    }

    function _register(bytes16 masterId, address contractAddress) private {
        masters[masterId] = contractAddress;
        emit MasterRegistered(masterId, contractAddress);
    }
}
